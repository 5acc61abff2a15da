"""One-step offboarding: the leaver is offboarded and their mailboxes handed to a successor.

``POST /v1/employees/{id}/offboard`` appends, in one transaction, EmployeeOffboarded (naming the
mailboxes the leaver owned, the successor and the autoreply) and MailboxHandedOver on each of
those mailboxes when a successor is named. The authz service reacts to EmployeeOffboarded:
every grant the leaver holds is revoked and the leaver's tokens stop working; the mailboxes keep
their history and keep being synced. A second call changes nothing and says so; reinstating
is ``POST /v1/employees/{id}/reinstate`` (audited as EmployeeReinstated).

``"dry_run": true`` runs the same :func:`decide` against the same state and answers with the
events it would append (and the report the real call would give), writing nothing. Its
``plan_digest`` passed back as ``expected_plan`` makes the real call refuse (409
``plan_changed``) if it would now append anything else — the console's wizard confirms exactly
the plan it showed. Grants are authz's: the registry can only say that all of them go.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.errors import Conflict, NotFound
from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.registry import EmployeeOffboarded
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.registry.api import context
from services.registry.domain import accounts, employees
from services.registry.domain_accounts import AccountState
from services.registry.domain_employees import EmployeeState
from services.registry.handlers import load_account, load_employee, wrap
from services.registry.repository import AccountFilter, RegistryRepository
from services.registry.validation import Invalid


class OffboardIn(BaseModel):
    successor_id: str | None = Field(None, max_length=64)
    autoreply: str | None = Field(None, max_length=4000)
    dry_run: bool = Field(
        False,
        description="decide against the current state and answer with what would be "
        "committed, writing nothing (no event, no outbox row)",
    )
    expected_plan: str | None = Field(
        None,
        max_length=64,
        description="the plan_digest of a dry run: refused 409 plan_changed when the call "
        "would now commit anything else",
    )


class MailboxOutcome(BaseModel):
    id: str
    address: str
    handed_over_to: str | None


class PlannedEvent(BaseModel):
    type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    data: dict[str, Any]


class OffboardingOut(BaseModel):
    employee_id: str
    status: Literal["active", "offboarded"]
    changed: bool
    dry_run: bool = False
    successor_id: str | None = None
    autoreply: str | None = None
    mailboxes: list[MailboxOutcome] = Field(default_factory=list)
    grants: str = ""
    events: list[PlannedEvent] = Field(
        default_factory=list,
        description="the events this call appended (dry run: would append), in order",
    )
    plan_digest: str | None = Field(
        None, description="names exactly these events: pass it back as expected_plan"
    )


@dataclass(frozen=True)
class Plan:
    """What offboarding decides against the current state (nothing when already offboarded)."""

    owned: list[tuple[str, str]]
    events: list[Envelope]

    @property
    def digest(self) -> str:
        return plan_digest(self.events)


def plan_digest(events: list[Envelope]) -> str:
    doc = [[e.type, e.aggregate_id, e.data] for e in events]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _planned(e: Envelope) -> PlannedEvent:
    return PlannedEvent(
        type=e.type,
        aggregate_type=e.aggregate,
        aggregate_id=e.aggregate_id,
        aggregate_version=e.aggregate_version,
        data=e.data,
    )


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


async def decide(
    conn: AsyncConnection,
    ctx: CommandContext,
    state: EmployeeState,
    body: OffboardIn,
    load_account: Callable[[str], Awaitable[AccountState]],
) -> Plan:
    """The events offboarding appends, decided against the current state; the real call and
    the dry run both come here (the real one inside its transaction, with its rows locked)."""
    if state.status == "new":
        raise NotFound(f"no employee {state.id}")
    if state.status == "offboarded":
        return Plan([], [])
    repo = RegistryRepository(conn, ctx.tenant_id)
    if body.successor_id is not None:
        successor = await repo.employee(body.successor_id)
        if successor is None or successor.status != "active":
            raise Invalid(
                "the successor must be an active employee",
                code="unknown_successor",
                details={"field": "successor_id"},
            )
    owned = await _owned(conn, ctx.tenant_id, state.id)
    decided = employees.decide(employees.OffboardEmployee(body.successor_id), state)
    offboarded = decided[0]
    assert isinstance(offboarded, EmployeeOffboarded)
    offboarded = offboarded.model_copy(
        update={"autoreply": body.autoreply, "mailbox_ids": [i for i, _ in owned]}
    )
    events = wrap(ctx, state.id, state.version, [offboarded])
    if body.successor_id is not None:
        for account_id, _ in owned:
            acc = await load_account(account_id)
            handed = accounts.decide(accounts.HandOver(body.successor_id), acc)
            events += wrap(ctx, account_id, acc.version, handed)
    return Plan(owned, events)


async def offboard(
    db: Database, ctx: CommandContext, employee_id: str, body: OffboardIn
) -> OffboardingOut:
    if body.dry_run:
        return await dry_run(db, ctx, employee_id, body)
    async with db.transaction() as tx:
        state = await load_employee(tx, ctx.tenant_id, employee_id)
        plan = await decide(tx.conn, ctx, state, body, lambda i: load_account(tx, ctx.tenant_id, i))
        if plan.events and body.expected_plan not in (None, plan.digest):
            raise Conflict(
                "the offboarding would now do something else than the plan you reviewed: "
                "review it again",
                code="plan_changed",
            )
        for _, group in groupby(plan.events, key=lambda e: e.aggregate_id):
            envelopes = list(group)
            await tx.append(envelopes, expected_version=envelopes[0].aggregate_version - 1)
    out = await report(db, ctx.tenant_id, employee_id, changed=bool(plan.events))
    return _with_plan(out, plan)


async def dry_run(
    db: Database, ctx: CommandContext, employee_id: str, body: OffboardIn
) -> OffboardingOut:
    """What ``offboard`` would commit now and answer, with nothing written."""
    async with db.read() as conn:

        async def fold(aggregate_id: str) -> list[Event]:
            return [e.event() for e in await db.store.load(conn, ctx.tenant_id, aggregate_id)]

        async def account(account_id: str) -> AccountState:
            return accounts.fold(account_id, await fold(account_id))

        state = employees.fold(employee_id, await fold(employee_id))
        plan = await decide(conn, ctx, state, body, account)
    if not plan.events:  # already offboarded: the real call changes nothing and says so
        out = await report(db, ctx.tenant_id, employee_id, changed=False)
        return _with_plan(out, plan, dry_run=True)
    handed = {
        e.aggregate_id: e.data["to_owner_id"] for e in plan.events if e.aggregate == "account"
    }
    out = OffboardingOut(
        employee_id=employee_id,
        status="offboarded",
        changed=True,
        successor_id=body.successor_id,
        autoreply=body.autoreply,
        mailboxes=[
            MailboxOutcome(id=i, address=a, handed_over_to=handed.get(i)) for i, a in plan.owned
        ],
    )
    return _with_plan(out, plan, dry_run=True)


def _with_plan(out: OffboardingOut, plan: Plan, *, dry_run: bool = False) -> OffboardingOut:
    verb = "would be" if dry_run else "is"
    out.grants = (
        f"every grant the employee holds {verb} revoked by authz when it sees "
        f"EmployeeOffboarded (the registry keeps no grants): GET "
        f"/v1/employees/{out.employee_id}/access lists them"
    )
    if not plan.events and out.status == "offboarded":
        out.grants = "already offboarded: authz revoked the employee's grants then"
    out.dry_run = dry_run
    out.events = [_planned(e) for e in plan.events]
    out.plan_digest = plan.digest
    return out


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
        grants=f"authz revokes every grant on offboarding: GET /v1/employees/{employee_id}/access",
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
        """Offboard in one step (idempotent: a second call says ``changed: false``).
        ``dry_run`` answers with what would be committed and writes nothing."""
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
