"""The event store: append with optimistic concurrency, load an aggregate's history."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.envelope import Envelope
from libs.common.store.fastinsert import insert_rows
from libs.common.store.tables import StoreTables


class ConcurrencyError(Exception):
    """Another command changed the aggregate first (HTTP 409, code ``concurrent_modification``)."""

    code = "concurrent_modification"

    def __init__(self, aggregate_id: str, expected: int | None, actual: int | None) -> None:
        super().__init__(
            f"aggregate {aggregate_id} is at version {actual}, the command expected {expected}"
        )
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual


class EventStore:
    def __init__(self, tables: StoreTables) -> None:
        self.t = tables

    async def version(self, conn: AsyncConnection, aggregate_id: str) -> int:
        ev = self.t.events
        q = select(func.max(ev.c.aggregate_version)).where(ev.c.aggregate_id == aggregate_id)
        return int((await conn.execute(q)).scalar() or 0)

    async def load(
        self, conn: AsyncConnection, tenant_id: str, aggregate_id: str
    ) -> list[Envelope]:
        ev = self.t.events
        q = (
            select(ev.c.envelope)
            .where(ev.c.tenant_id == tenant_id, ev.c.aggregate_id == aggregate_id)
            .order_by(ev.c.aggregate_version)
        )
        return [Envelope.model_validate_json(r[0]) for r in await conn.execute(q)]

    async def versions(self, conn: AsyncConnection, aggregate_ids: Sequence[str]) -> dict[str, int]:
        """Current version of each aggregate (0 for a new one), in one query."""
        ev = self.t.events
        found: dict[str, int] = dict.fromkeys(aggregate_ids, 0)
        ids = list(found)
        for i in range(0, len(ids), 500):
            q = (
                select(ev.c.aggregate_id, func.max(ev.c.aggregate_version))
                .where(ev.c.aggregate_id.in_(ids[i : i + 500]))
                .group_by(ev.c.aggregate_id)
            )
            for agg, version in await conn.execute(q):
                found[agg] = int(version)
        return found

    @staticmethod
    def check(
        events: Sequence[Envelope], versions: dict[str, int], expected_version: int | None
    ) -> None:
        """Raise ConcurrencyError unless ``events`` continue their aggregates' histories.

        ``versions`` is updated in place, so a batch of commands can be checked one by one.
        """
        by_agg: dict[str, list[Envelope]] = defaultdict(list)
        for e in events:
            by_agg[e.aggregate_id].append(e)
        if expected_version is not None and len(by_agg) != 1:
            raise ValueError("expected_version needs events of exactly one aggregate")
        for agg_id, evs in by_agg.items():
            current = versions.get(agg_id, 0)
            if expected_version is not None and current != expected_version:
                raise ConcurrencyError(agg_id, expected_version, current)
            first = evs[0].aggregate_version
            if first != current + 1 or any(
                e.aggregate_version != first + i for i, e in enumerate(evs)
            ):
                raise ConcurrencyError(agg_id, first - 1, current)
        for agg_id, evs in by_agg.items():
            versions[agg_id] = evs[-1].aggregate_version

    async def append(
        self,
        conn: AsyncConnection,
        events: Sequence[Envelope],
        *,
        expected_version: int | None = None,
    ) -> None:
        """Append events; ``expected_version`` applies to the single aggregate of ``events``.

        Versions must continue each aggregate's history without gaps. A concurrent append of
        the same version is caught by UNIQUE(aggregate_id, aggregate_version) as a backstop.
        """
        versions = await self.versions(conn, sorted({e.aggregate_id for e in events}))
        self.check(events, versions, expected_version)
        await self.insert(conn, events, expected_version)

    async def insert(
        self, conn: AsyncConnection, events: Sequence[Envelope], expected: int | None = None
    ) -> None:
        """Insert checked events and their outbox rows (two statements for any batch size)."""
        event_rows = []
        outbox_rows = []
        for e in events:
            event_rows.append(
                {
                    "id": e.id,
                    "tenant_id": e.tenant_id,
                    "aggregate_type": e.aggregate,
                    "aggregate_id": e.aggregate_id,
                    "aggregate_version": e.aggregate_version,
                    "type": e.type,
                    "time": e.time,
                    "envelope": e.model_dump_json(),
                }
            )
            outbox_rows.append(
                {
                    "event_id": e.id,
                    "subject": e.nats_subject,
                    "headers": e.header_block(),  # encoded once, here (outbox.py)
                    "body": e.body(),
                }
            )
        try:
            await insert_rows(conn, self.t.events, event_rows)
        except IntegrityError as exc:
            raise ConcurrencyError(events[0].aggregate_id, expected, None) from exc
        await insert_rows(conn, self.t.outbox, outbox_rows)
