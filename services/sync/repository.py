"""Every query of the sync store, each scoped to one tenant (start-up loading excepted)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.sync import AccountStatusChanged
from libs.common.store.eventstore import EventStore
from services.sync.domain import Health, Outcome
from services.sync.models import (
    Account,
    FolderState,
    StatusRow,
    account_of,
    as_utc,
    health_of,
    health_values,
    status_of,
    utc,
)
from services.sync.tables import accounts, ews_folders, folders, history, messages, status

ACTOR = "service:sync"


class SyncRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    # --- accounts ---------------------------------------------------------------------------
    def _acc(self, account_id: str) -> Any:
        return and_(accounts.c.tenant_id == self.tenant_id, accounts.c.account_id == account_id)

    async def account(self, account_id: str) -> Account | None:
        r = (await self.conn.execute(select(accounts).where(self._acc(account_id)))).first()
        return account_of(r) if r else None

    async def put_account(self, a: Account) -> None:
        values = {
            "address": a.address,
            "protocol": a.protocol,
            "settings": a.settings.model_dump_json(),
            "enabled": a.enabled,
            "credential_version": a.credential_version,
        }
        done = await self.conn.execute(update(accounts).where(self._acc(a.account_id)), values)
        if not done.rowcount:
            await self.conn.execute(
                insert(accounts).values(
                    tenant_id=self.tenant_id,
                    account_id=a.account_id,
                    added_at=a.added_at,
                    **values,
                )
            )

    async def forget(self, account_id: str) -> None:
        """Everything sync knows about the account (its events stay in the event store)."""
        for t in (accounts, status, history, folders, messages, ews_folders):
            await self.conn.execute(
                delete(t).where(t.c.tenant_id == self.tenant_id, t.c.account_id == account_id)
            )

    # --- status -----------------------------------------------------------------------------
    def _st(self, account_id: str) -> Any:
        return and_(status.c.tenant_id == self.tenant_id, status.c.account_id == account_id)

    async def health(self, account_id: str, *, lock: bool = False) -> Health | None:
        q = select(status).where(self._st(account_id))
        if lock and self.conn.dialect.name == "postgresql":
            q = q.with_for_update()
        r = (await self.conn.execute(q)).first()
        return health_of(r) if r else None

    async def locked_status(self, account_id: str) -> StatusRow | None:
        """The status row inside a write transaction (locked on PostgreSQL)."""
        q = (
            select(status, accounts.c.address, accounts.c.protocol)
            .select_from(
                status.outerjoin(
                    accounts,
                    and_(
                        accounts.c.tenant_id == status.c.tenant_id,
                        accounts.c.account_id == status.c.account_id,
                    ),
                )
            )
            .where(self._st(account_id))
        )
        if self.conn.dialect.name == "postgresql":
            q = q.with_for_update(of=status)
        r = (await self.conn.execute(q)).first()
        return status_of(r) if r else None

    async def status(self, account_id: str) -> StatusRow | None:
        rows = await self.statuses(mailbox=account_id, limit=1)
        return rows[0] if rows else None

    async def statuses(
        self,
        *,
        state: str | None = None,
        mailbox: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[StatusRow]:
        q = (
            select(status, accounts.c.address, accounts.c.protocol)
            .select_from(
                status.outerjoin(
                    accounts,
                    and_(
                        accounts.c.tenant_id == status.c.tenant_id,
                        accounts.c.account_id == status.c.account_id,
                    ),
                )
            )
            .where(status.c.tenant_id == self.tenant_id)
        )
        if state is not None:
            q = q.where(status.c.state == state)
        if mailbox is not None:
            q = q.where(status.c.account_id == mailbox)
        if after is not None:
            q = q.where(status.c.account_id > after)
        rows = await self.conn.execute(q.order_by(status.c.account_id).limit(limit))
        return [status_of(r) for r in rows]

    async def apply_outcome(
        self, account_id: str, outcome: Outcome, now: datetime, *, create: bool = False
    ) -> None:
        values = health_values(outcome.health)
        if create:
            await self.conn.execute(
                insert(status).values(
                    tenant_id=self.tenant_id,
                    account_id=account_id,
                    silence_reported=False,
                    idle=False,
                    **values,
                )
            )
        else:
            await self.conn.execute(update(status).where(self._st(account_id)), values)
        for e in outcome.events:
            if isinstance(e, AccountStatusChanged):
                await self.conn.execute(
                    insert(history).values(
                        tenant_id=self.tenant_id,
                        account_id=account_id,
                        at=now,
                        state=e.status,
                        previous=e.previous,
                        detail=e.detail[:500],
                    )
                )

    async def set_status(self, account_id: str, **values: Any) -> None:
        await self.conn.execute(update(status).where(self._st(account_id)), values)

    async def quota(self, account_id: str) -> tuple[int, int, datetime | None] | None:
        q = select(status.c.quota_used_kb, status.c.quota_limit_kb, status.c.quota_at).where(
            self._st(account_id)
        )
        r = (await self.conn.execute(q)).first()
        if r is None or r[0] is None or r[1] is None:
            return None
        return int(r[0]), int(r[1]), utc(r[2])

    async def history(self, account_id: str, limit: int = 100) -> list[Any]:
        q = (
            select(
                history.c.seq, history.c.at, history.c.state, history.c.previous, history.c.detail
            )
            .where(history.c.tenant_id == self.tenant_id, history.c.account_id == account_id)
            .order_by(history.c.seq.desc())
            .limit(limit)
        )
        return list(reversed(list(await self.conn.execute(q))))

    # --- folders and messages ---------------------------------------------------------------
    async def folders(self, account_id: str) -> dict[str, FolderState]:
        q = select(folders).where(
            folders.c.tenant_id == self.tenant_id, folders.c.account_id == account_id
        )
        return {
            r.folder: FolderState(
                r.folder,
                int(r.uidvalidity),
                r.uidnext,
                int(r.last_uid),
                int(r.exists),
                int(r.known),
                as_utc(r.last_synced_at),
            )
            for r in await self.conn.execute(q)
        }

    async def save_folder(self, account_id: str, f: FolderState, poll_s: float | None) -> None:
        key = and_(
            folders.c.tenant_id == self.tenant_id,
            folders.c.account_id == account_id,
            folders.c.folder == f.folder,
        )
        values = {
            "uidvalidity": f.uidvalidity,
            "uidnext": f.uidnext,
            "last_uid": f.last_uid,
            "exists": f.exists,
            "known": f.known,
            "last_synced_at": f.last_synced_at,
            "poll_seconds": poll_s,
        }
        if not (await self.conn.execute(update(folders).where(key), values)).rowcount:
            await self.conn.execute(
                insert(folders).values(
                    tenant_id=self.tenant_id, account_id=account_id, folder=f.folder, **values
                )
            )

    def _msg(self, account_id: str, folder: str, uidvalidity: int) -> Any:
        return and_(
            messages.c.tenant_id == self.tenant_id,
            messages.c.account_id == account_id,
            messages.c.folder == folder,
            messages.c.uidvalidity == uidvalidity,
        )

    async def known_uids(self, account_id: str, folder: str, uidvalidity: int) -> set[int]:
        q = select(messages.c.uid).where(self._msg(account_id, folder, uidvalidity))
        return {int(u) for u in (await self.conn.execute(q)).scalars()}

    async def existing(
        self, account_id: str, folder: str, uidvalidity: int, uids: Sequence[int]
    ) -> set[int]:
        found: set[int] = set()
        for i in range(0, len(uids), 500):
            q = select(messages.c.uid).where(
                self._msg(account_id, folder, uidvalidity),
                messages.c.uid.in_(list(uids[i : i + 500])),
            )
            found |= {int(u) for u in (await self.conn.execute(q)).scalars()}
        return found

    async def add_messages(
        self,
        account_id: str,
        folder: str,
        uidvalidity: int,
        uids: Sequence[tuple[int, str | None]],
        now: datetime,
        *,
        hub_deleted: bool = False,
    ) -> None:
        rows = [
            {
                "tenant_id": self.tenant_id,
                "account_id": account_id,
                "folder": folder,
                "uidvalidity": uidvalidity,
                "uid": uid,
                "uidl": uidl,
                "hub_deleted": hub_deleted,
                "seen_at": now,
            }
            for uid, uidl in uids
        ]
        for i in range(0, len(rows), 1000):
            await self.conn.execute(insert(messages), rows[i : i + 1000])

    async def remove_uids(
        self, account_id: str, folder: str, uidvalidity: int | None, uids: Sequence[int] | None
    ) -> None:
        """Forget UIDs (all of the folder's other UIDVALIDITYs when ``uids`` is None)."""
        base = and_(
            messages.c.tenant_id == self.tenant_id,
            messages.c.account_id == account_id,
            messages.c.folder == folder,
        )
        if uids is None:
            cond = (
                base if uidvalidity is None else and_(base, messages.c.uidvalidity != uidvalidity)
            )
            await self.conn.execute(delete(messages).where(cond))
            return
        for i in range(0, len(uids), 500):
            await self.conn.execute(
                delete(messages).where(
                    base,
                    messages.c.uidvalidity == uidvalidity,
                    messages.c.uid.in_(list(uids[i : i + 500])),
                )
            )

    # --- POP3 -------------------------------------------------------------------------------
    async def known_uidls(self, account_id: str) -> dict[str, tuple[int, bool]]:
        q = select(messages.c.uidl, messages.c.uid, messages.c.hub_deleted).where(
            self._msg(account_id, "INBOX", 0)
        )
        return {r.uidl: (int(r.uid), bool(r.hub_deleted)) for r in await self.conn.execute(q)}

    async def max_uid(self, account_id: str, folder: str, uidvalidity: int) -> int:
        q = select(func.max(messages.c.uid)).where(self._msg(account_id, folder, uidvalidity))
        return int((await self.conn.execute(q)).scalar() or 0)

    async def mark_hub_deleted(self, account_id: str, uids: Sequence[int]) -> None:
        if uids:
            await self.conn.execute(
                update(messages)
                .where(self._msg(account_id, "INBOX", 0), messages.c.uid.in_(list(uids)))
                .values(hub_deleted=True)
            )

    # --- events -----------------------------------------------------------------------------
    async def wrap(
        self,
        store: EventStore,
        account_id: str,
        events: Sequence[Event],
        ctx: CommandContext | None = None,
    ) -> list[Envelope]:
        """Envelopes continuing the mailbox aggregate's history in the sync store."""
        if not events:
            return []
        ctx = ctx or CommandContext(self.tenant_id, ACTOR)
        version = await store.version(self.conn, account_id)
        return [
            Envelope.wrap(e, ctx, aggregate_id=account_id, aggregate_version=version + i)
            for i, e in enumerate(events, start=1)
        ]


async def watchable_accounts(conn: AsyncConnection) -> list[Account]:
    """Every tenant's enabled accounts (the scheduler's start-up load; internal only)."""
    rows = await conn.execute(select(accounts).where(accounts.c.enabled.is_(True)))
    return [a for a in (account_of(r) for r in rows) if a.watchable]


async def state_counts(conn: AsyncConnection) -> dict[str, int]:
    """Accounts per sync state over every tenant: an operational metric, never an API answer."""
    q = select(status.c.state, func.count()).group_by(status.c.state)
    return {str(state): int(n) for state, n in await conn.execute(q)}
