"""Every query of the authz store, each scoped to one tenant (the list of tenants excepted)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.envelope import Envelope
from services.authz import domain
from services.authz.tables import changes, employees, grants, mailboxes, tenants


class AuthzRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.t = tenant_id

    # --- revision and change log ----------------------------------------------------------
    async def head(self, *, lock: bool = False) -> int:
        q = select(tenants.c.revision).where(tenants.c.tenant_id == self.t)
        if lock and self.conn.dialect.name == "postgresql":
            q = q.with_for_update()  # one writer per tenant at a time: revisions never race
        return int((await self.conn.execute(q)).scalar() or 0)

    async def set_head(self, revision: int) -> None:
        res = await self.conn.execute(
            update(tenants).where(tenants.c.tenant_id == self.t).values(revision=revision)
        )
        if res.rowcount == 0:
            await self.conn.execute(insert(tenants).values(tenant_id=self.t, revision=revision))

    async def log_change(self, revision: int, env: Envelope) -> None:
        row = {"tenant_id": self.t, "revision": revision, "type": env.type}
        recorded = domain.fmt_time(datetime.now(UTC))
        await self.conn.execute(
            insert(changes).values(**row, envelope=env.model_dump_json(), recorded_at=recorded)
        )

    async def first_change(self) -> int | None:
        """The oldest revision the change log still holds (None: empty)."""
        q = select(func.min(changes.c.revision)).where(changes.c.tenant_id == self.t)
        value = (await self.conn.execute(q)).scalar()
        return int(value) if value is not None else None

    async def prune_changes(self, before: datetime) -> int:
        """Delete changes recorded before ``before`` (or before recording times were kept),
        always keeping the newest; return how many went."""
        head = await self.head()
        recorded = changes.c.recorded_at
        res = await self.conn.execute(
            delete(changes).where(
                changes.c.tenant_id == self.t,
                changes.c.revision < head,
                or_(recorded.is_(None), recorded < domain.fmt_time(before)),
            )
        )
        return int(res.rowcount or 0)

    async def changes_after(self, revision: int, limit: int = 1000) -> list[tuple[int, str]]:
        q = (
            select(changes.c.revision, changes.c.envelope)
            .where(changes.c.tenant_id == self.t, changes.c.revision > revision)
            .order_by(changes.c.revision)
            .limit(limit)
        )
        return [(int(r[0]), str(r[1])) for r in await self.conn.execute(q)]

    # --- projection writes ----------------------------------------------------------------
    async def apply_op(self, op: domain.Op) -> None:
        c = self.conn
        t = self.t
        if isinstance(op, domain.PutMailbox):
            await c.execute(delete(mailboxes).where(*self._mb(op.mailbox_id)))
            await c.execute(
                insert(mailboxes).values(
                    tenant_id=t,
                    mailbox_id=op.mailbox_id,
                    owner_id=op.owner_id,
                    ownership=op.ownership,
                    disabled=False,
                    deleted=False,
                )
            )
        elif isinstance(op, domain.SetMailbox):
            if op.fields:
                await c.execute(
                    update(mailboxes).where(*self._mb(op.mailbox_id)).values(**op.fields)
                )
        elif isinstance(op, domain.ReassignOwner):
            await c.execute(
                update(mailboxes)
                .where(mailboxes.c.tenant_id == t, mailboxes.c.owner_id == op.from_owner)
                .values(owner_id=op.to_owner)
            )
        elif isinstance(op, domain.PutEmployee):
            res = await c.execute(
                update(employees)
                .where(employees.c.tenant_id == t, employees.c.employee_id == op.employee_id)
                .values(**op.fields)
            )
            if res.rowcount == 0:
                row: dict[str, Any] = {"department": None, "offboarded": False, **op.fields}
                await c.execute(
                    insert(employees).values(tenant_id=t, employee_id=op.employee_id, **row)
                )
        elif isinstance(op, domain.PutGrant):
            g = op.grant
            await c.execute(
                delete(grants).where(*self._grant(g.mailbox_id, g.grantee_kind, g.grantee_id))
            )
            await c.execute(
                insert(grants).values(
                    tenant_id=t,
                    mailbox_id=g.mailbox_id,
                    grantee_kind=g.grantee_kind,
                    grantee_id=g.grantee_id,
                    level=g.level,
                    on_behalf=g.on_behalf,
                    expires_at=domain.fmt_time(g.expires_at),
                    revision=g.revision,
                )
            )
        elif isinstance(op, domain.DropGrant):
            where = self._grant(op.mailbox_id, op.grantee_kind, op.grantee_id)
            await c.execute(delete(grants).where(*where))
        elif isinstance(op, domain.DropMailboxGrants):
            await c.execute(
                delete(grants).where(grants.c.tenant_id == t, grants.c.mailbox_id == op.mailbox_id)
            )
        elif isinstance(op, domain.DropGranteeGrants):
            await c.execute(
                delete(grants).where(
                    grants.c.tenant_id == t,
                    grants.c.grantee_kind == op.grantee_kind,
                    grants.c.grantee_id == op.grantee_id,
                )
            )

    def _mb(self, mailbox_id: str) -> tuple[Any, ...]:
        return (mailboxes.c.tenant_id == self.t, mailboxes.c.mailbox_id == mailbox_id)

    def _grant(self, mailbox_id: str, kind: str, grantee_id: str) -> tuple[Any, ...]:
        return (
            grants.c.tenant_id == self.t,
            grants.c.mailbox_id == mailbox_id,
            grants.c.grantee_kind == kind,
            grants.c.grantee_id == grantee_id,
        )

    async def reset(self) -> None:
        """Forget the projection (not the change log) before a rebuild."""
        for table in (grants, employees, mailboxes):
            await self.conn.execute(delete(table).where(table.c.tenant_id == self.t))
        await self.set_head(0)

    # --- reads ----------------------------------------------------------------------------
    async def load_state(self) -> domain.TenantState:
        """The whole tenant (read it in one snapshot: see AuthzIndex.load)."""
        state = domain.TenantState(self.t, await self.head())
        await self._load(state, None, None)
        return state

    async def load_slice(
        self, mailbox_id: str, employee_ids: Iterable[str], revision: int
    ) -> domain.TenantState:
        """One mailbox, its grants and some employees: enough to decide a grant change."""
        state = domain.TenantState(self.t, revision)
        await self._load(state, mailbox_id, list(employee_ids))
        return state

    async def _load(
        self, state: domain.TenantState, mailbox_id: str | None, employee_ids: list[str] | None
    ) -> None:
        mq = select(mailboxes).where(mailboxes.c.tenant_id == self.t)
        eq = select(employees).where(employees.c.tenant_id == self.t)
        gq = select(grants).where(grants.c.tenant_id == self.t)
        if mailbox_id is not None:
            mq = mq.where(mailboxes.c.mailbox_id == mailbox_id)
            gq = gq.where(grants.c.mailbox_id == mailbox_id)
        if employee_ids is not None:
            eq = eq.where(employees.c.employee_id.in_(employee_ids))
        for r in await self.conn.execute(mq):
            state.mailboxes[r.mailbox_id] = domain.Mailbox(
                r.mailbox_id, r.owner_id, r.ownership, bool(r.disabled), bool(r.deleted)
            )
        for r in await self.conn.execute(eq):
            state.employees[r.employee_id] = domain.Employee(
                r.employee_id, r.department, bool(r.offboarded)
            )
        for g in await self._grants(gq):
            state.put_grant(g)

    async def _grants(self, q: Any) -> list[domain.Grant]:
        return [
            domain.Grant(
                r.mailbox_id,
                r.grantee_kind,
                r.grantee_id,
                r.level,
                bool(r.on_behalf),
                domain.parse_time(r.expires_at),
                int(r.revision),
            )
            for r in await self.conn.execute(q)
        ]

    async def grants_held(self, grantee_kind: str, grantee_id: str) -> list[domain.Grant]:
        q = select(grants).where(
            grants.c.tenant_id == self.t,
            grants.c.grantee_kind == grantee_kind,
            grants.c.grantee_id == grantee_id,
        )
        return await self._grants(q)

    async def grants_on(self, mailbox_id: str) -> list[domain.Grant]:
        q = select(grants).where(grants.c.tenant_id == self.t, grants.c.mailbox_id == mailbox_id)
        return await self._grants(q)

    async def expired_grants(self, now: datetime) -> list[domain.Grant]:
        q = select(grants).where(
            grants.c.tenant_id == self.t,
            grants.c.expires_at.is_not(None),
            grants.c.expires_at <= domain.fmt_time(now),
        )
        return await self._grants(q)


async def tenant_heads(conn: AsyncConnection) -> dict[str, int]:
    """Every tenant's revision: how a replica's index learns that it is behind."""
    rows = await conn.execute(select(tenants.c.tenant_id, tenants.c.revision))
    return {str(r[0]): int(r[1]) for r in rows}
