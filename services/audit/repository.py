"""Every query of the audit store, each scoped to one tenant (replay for rebuilds excepted)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.envelope import Envelope
from services.audit import domain
from services.audit.tables import entries


@dataclass(frozen=True)
class AuditQuery:
    aggregate_id: str | None = None
    aggregate_type: str | None = None
    type: str | None = None
    actor: str | None = None
    correlation_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    aggregate_types: tuple[str, ...] | None = None
    """Only entries of these aggregate types (None: any)."""


class AuditRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    def _scoped(self) -> Select[tuple[int, int, bytes, bytes, bytes]]:
        return select(
            entries.c.position,
            entries.c.tenant_seq,
            entries.c.canonical,
            entries.c.entry_hash,
            entries.c.chain_hash,
        ).where(entries.c.tenant_id == self.tenant_id)

    async def page(
        self,
        q: AuditQuery,
        limit: int,
        *,
        after: int | None = None,
        before: int | None = None,
        newest_first: bool = False,
    ) -> list[domain.StoredEntry]:
        """Up to ``limit`` entries matching ``q`` between the positions (exclusive), in chain
        order or newest first (indexes: tenant and position; tenant, aggregate and position)."""
        stmt = self._scoped()
        if after is not None:
            stmt = stmt.where(entries.c.position > after)
        if before is not None:
            stmt = stmt.where(entries.c.position < before)
        for col, value in (
            (entries.c.aggregate_id, q.aggregate_id),
            (entries.c.aggregate_type, q.aggregate_type),
            (entries.c.actor, q.actor),
            (entries.c.correlation_id, q.correlation_id),
        ):
            if value is not None:
                stmt = stmt.where(col == value)
        if q.aggregate_types is not None:
            stmt = stmt.where(entries.c.aggregate_type.in_(q.aggregate_types))
        if q.type is not None:
            # "AccountAdded" matches every version; a full CloudEvents type matches exactly.
            if q.type.startswith("mailroom."):
                stmt = stmt.where(entries.c.type == q.type)
            else:
                stmt = stmt.where(entries.c.type.like(f"mailroom.%.{q.type}.v%"))
        if q.since is not None:
            stmt = stmt.where(entries.c.time >= q.since)
        if q.until is not None:
            stmt = stmt.where(entries.c.time < q.until)
        order = entries.c.position.desc() if newest_first else entries.c.position.asc()
        rows = await self.conn.execute(stmt.order_by(order).limit(limit))
        return [_stored(r) for r in rows]

    async def chain(self, batch: int = 5000) -> AsyncIterator[domain.StoredEntry]:
        """The tenant's whole chain in order (for verification and export)."""
        after = 0
        while True:
            stmt = (
                self._scoped()
                .where(entries.c.tenant_seq > after)
                .order_by(entries.c.tenant_seq)
                .limit(batch)
            )
            rows = [_stored(r) for r in await self.conn.execute(stmt)]
            for r in rows:
                yield r
            if len(rows) < batch:
                return
            after = rows[-1].tenant_seq

    async def event_id_at(self, position: int) -> str | None:
        stmt = select(entries.c.event_id).where(
            entries.c.tenant_id == self.tenant_id, entries.c.position == position
        )
        return (await self.conn.execute(stmt)).scalar()


def _stored(r: Any) -> domain.StoredEntry:
    return domain.StoredEntry(r[0], r[1], bytes(r[2]), bytes(r[3]), bytes(r[4]))


async def replay_all(conn: AsyncConnection, after: int, limit: int) -> list[tuple[int, Envelope]]:
    """Every tenant's events from a position, for projection rebuilds (internal request only)."""
    stmt = (
        select(entries.c.position, entries.c.canonical)
        .where(entries.c.position > after)
        .order_by(entries.c.position)
        .limit(limit)
    )
    return [(r[0], Envelope.model_validate_json(r[1])) for r in await conn.execute(stmt)]
