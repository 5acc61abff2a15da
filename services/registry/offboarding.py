"""One-step offboarding: the leaver is offboarded and their mailboxes handed to a successor.

``POST /v1/employees/{id}/offboard`` appends, in one transaction, EmployeeOffboarded (naming the
mailboxes the leaver owned, the successor and the autoreply) and MailboxHandedOver on each of
those mailboxes when a successor is named. The authz service reacts to EmployeeOffboarded:
every grant the leaver holds is revoked and the leaver's tokens stop working; the mailboxes keep
their history and keep being synced. A second call changes nothing and says so; reinstating
is ``POST /v1/employees/{id}/reinstate`` (audited as EmployeeReinstated).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.errors import Conflict, NotFound
from libs.common.events.envelope import CommandContext
from libs.common.events.registry import EmployeeOffboarded
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database, Tx
from services.registry.api import context
from services.registry.domain import accounts, employees
from services.registry.domain_employees import EmployeeState
from services.registry.handlers import load_account, load_employee, wrap
from services.registry.repository import AccountFilter, RegistryRepository
from services.registry.validation import Invalid


class OffboardIn(BaseModel):
    successor_id: str | None = Field(None, max_length=64)
    autoreply: str | None = Field(None, max_length=4000)


class MailboxOutcome(BaseModel):
    id: str
    address: str
    handed_over_to: str | None


class OffboardingOut(BaseModel):
    employee_id: str
    status: Literal["active", "offboarded"]
    changed: bool
    successor_id: str | None = None
    autoreply: str | None = None
    mailboxes: list[MailboxOutcome] = Field(default_factory=list)
    grants: str = "every grant the employee held is revoked by authz: GET /v1/employees/{id}/access"


async def _owned(conn: AsyncConnection, tenant_id: str, employee_id: str) -> list[tuple[str, str]]:
    repo = RegistryRepository(conn, tenant_id)
    found: list[tuple[str, str]] = []
    after: str | None = None
    while True:
        page = await repo.accounts(AccountFilter(owner_id=employee_id), after, 500)
        found += [(a.id, a.address) for a in page]
        if len(page) < 500:
            return found
        after = page[-1].id


async def offboard(
    db: Database, ctx: CommandContext, employee_id: str, body: OffboardIn
) -> OffboardingOut:
    async with db.transaction() as tx:
        state = await load_employee(tx, ctx.tenant_id, employee_id)
        if state.status == "new":
            raise NotFound(f"no employee {employee_id}")
        already = state.status == "offboarded"
        if not already:
            await _offboard(tx, ctx, employee_id, body, state)
    return await report(db, ctx.tenant_id, employee_id, changed=not already)


async def _offboard(
    tx: Tx, ctx: CommandContext, employee_id: str, body: OffboardIn, state: EmployeeState
) -> None:
    repo = RegistryRepository(tx.conn, ctx.tenant_id)
    if body.successor_id is not None:
        successor = await repo.employee(body.successor_id)
        if successor is None or successor.status != "active":
            raise Invalid(
                "the successor must be an active employee",
                code="unknown_successor",
                details={"field": "successor_id"},
            )
    owned = await _owned(tx.conn, ctx.tenant_id, employee_id)
    events = employees.decide(employees.OffboardEmployee(body.successor_id), state)
    offboarded = events[0]
    assert isinstance(offboarded, EmployeeOffboarded)
    events = [
        offboarded.model_copy(
            update={"autoreply": body.autoreply, "mailbox_ids": [i for i, _ in owned]}
        )
    ]
    await tx.append(wrap(ctx, employee_id, state.version, events), expected_version=state.version)
    if body.successor_id is not None:
        for account_id, _ in owned:
            acc = await load_account(tx, ctx.tenant_id, account_id)
            handed = accounts.decide(accounts.HandOver(body.successor_id), acc)
            await tx.append(
                wrap(ctx, account_id, acc.version, handed), expected_version=acc.version
            )


async def reinstate(db: Database, ctx: CommandContext, employee_id: str) -> OffboardingOut:
    async with db.transaction() as tx:
        state = await load_employee(tx, ctx.tenant_id, employee_id)
        if state.status == "new":
            raise NotFound(f"no employee {employee_id}")
        if state.status == "active":
            raise Conflict("the employee is not offboarded", code="not_offboarded")
        events = employees.decide(employees.ReinstateEmployee(), state)
        await tx.append(
            wrap(ctx, employee_id, state.version, events), expected_version=state.version
        )
    return await report(db, ctx.tenant_id, employee_id, changed=True)


async def report(
    db: Database, tenant_id: str, employee_id: str, *, changed: bool
) -> OffboardingOut:
    """What the last offboarding did, per mailbox (from the employee's own events)."""
    history = await db.load(tenant_id, employee_id)
    if not history:
        raise NotFound(f"no employee {employee_id}")
    state = employees.fold(employee_id, (e.event() for e in history))
    last = next((e.event() for e in reversed(history) if "EmployeeOffboarded" in e.type), None)
    out = OffboardingOut(
        employee_id=employee_id,
        status="offboarded" if state.status == "offboarded" else "active",
        changed=changed,
    )
    if isinstance(last, EmployeeOffboarded):
        async with db.read() as conn:
            repo = RegistryRepository(conn, tenant_id)
            rows = {i: await repo.account(i) for i in last.mailbox_ids}
        out.successor_id = last.successor_id
        out.autoreply = last.autoreply
        out.mailboxes = [
            MailboxOutcome(
                id=i,
                address=r.address if r is not None else "(deleted)",
                handed_over_to=last.successor_id,
            )
            for i, r in rows.items()
        ]
    return out


def build_offboarding_router(db: Database) -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERRORS, tags=["offboarding"])  # type: ignore[arg-type]

    @r.post("/employees/{employee_id}/offboard", response_model=OffboardingOut)
    async def offboard_employee(
        caller: Caller, employee_id: str, body: OffboardIn
    ) -> OffboardingOut:
        """Offboard in one step (idempotent: a second call says ``changed: false``)."""
        caller.require_admin()
        return await offboard(db, context(caller), employee_id, body)

    @r.post("/employees/{employee_id}/reinstate", response_model=OffboardingOut)
    async def reinstate_employee(caller: Caller, employee_id: str) -> OffboardingOut:
        """Undo an offboarding (grants are not restored automatically)."""
        caller.require_admin()
        return await reinstate(db, context(caller), employee_id)

    @r.get("/employees/{employee_id}/offboarding", response_model=OffboardingOut)
    async def offboarding_report(caller: Caller, employee_id: str) -> OffboardingOut:
        """What the last offboarding did, per mailbox."""
        caller.require_admin()
        return await report(db, caller.tenant_id, employee_id, changed=False)

    return r
