"""The event store contract: every backend (SQLite, PostgreSQL) must pass the same tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events import Envelope
from libs.common.outbox import row_headers
from libs.common.store.database import Database
from libs.common.store.eventstore import ConcurrencyError
from tests.support.events import employee_events, many_aggregates

pytestmark = pytest.mark.connected


class CountingProjector:
    """A projection table updated in the same transaction as the events."""

    def __init__(self, metadata: MetaData, fail_on: str | None = None) -> None:
        self.table = Table(
            "people", metadata, Column("id", String(64), primary_key=True), Column("n", Integer)
        )
        self.fail_on = fail_on

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        for e in events:
            if self.fail_on and e.data.get("name") == self.fail_on:
                raise RuntimeError("projection refused")
        await conn.execute(
            insert(self.table), [{"id": e.id, "n": e.aggregate_version} for e in events]
        )


class EventStoreContract:
    """Subclasses provide the ``url`` fixture for their backend."""

    @pytest.fixture
    async def db(self, url: str) -> AsyncIterator[Database]:
        metadata = MetaData()
        self.projector = CountingProjector(metadata)
        database = Database(url, metadata, projector=self.projector)
        await database.create_all()
        yield database
        await database.dispose()

    async def count(self, db: Database, table: Table) -> int:
        async with db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)

    async def test_append_then_load_in_order(self, db: Database) -> None:
        events = employee_events(3)
        async with db.transaction() as tx:
            await tx.append(events, expected_version=0)
        async with db.transaction() as tx:
            loaded = await tx.load("acme", events[0].aggregate_id)
        assert [e.id for e in loaded] == [e.id for e in events]
        assert loaded[1] == events[1]

    async def test_load_is_scoped_by_tenant(self, db: Database) -> None:
        events = employee_events(1, tenant="acme")
        async with db.transaction() as tx:
            await tx.append(events)
            assert await tx.load("other", events[0].aggregate_id) == []

    async def test_expected_version_mismatch_is_a_conflict(self, db: Database) -> None:
        first = employee_events(1)
        async with db.transaction() as tx:
            await tx.append(first, expected_version=0)
        again = employee_events(1, aggregate_id=first[0].aggregate_id, start=2)
        with pytest.raises(ConcurrencyError) as info:
            async with db.transaction() as tx:
                await tx.append(again, expected_version=0)
        assert info.value.actual == 1
        assert await self.count(db, db.tables.events) == 1

    async def test_version_gap_is_refused(self, db: Database) -> None:
        gap = employee_events(1, start=3)
        with pytest.raises(ConcurrencyError):
            async with db.transaction() as tx:
                await tx.append(gap)

    async def test_concurrent_writers_exactly_one_wins(self, db: Database) -> None:
        base = employee_events(1)
        async with db.transaction() as tx:
            await tx.append(base)
        agg = base[0].aggregate_id

        async def writer() -> bool:
            try:
                async with db.transaction() as tx:
                    await tx.append(
                        employee_events(1, aggregate_id=agg, start=2), expected_version=1
                    )
                return True
            except ConcurrencyError:
                return False

        results = await asyncio.gather(*(writer() for _ in range(5)))
        assert results.count(True) == 1
        assert await self.count(db, db.tables.events) == 2

    async def test_events_projection_and_outbox_commit_together(self, db: Database) -> None:
        events = many_aggregates(50)
        async with db.transaction() as tx:
            await tx.append(events)
        assert await self.count(db, db.tables.events) == 50
        assert await self.count(db, db.tables.outbox) == 50
        assert await self.count(db, self.projector.table) == 50
        async with db.read() as conn:
            rows = (
                await conn.execute(select(db.tables.outbox).order_by(db.tables.outbox.c.seq))
            ).all()
        assert [r.event_id for r in rows] == [e.id for e in events]
        headers = row_headers(rows[0].headers)
        assert headers["Nats-Msg-Id"] == events[0].id
        assert headers["ce-type"] == "mailroom.registry.EmployeeAdded.v1"

    async def test_failing_projection_leaves_nothing_behind(self, db: Database) -> None:
        self.projector.fail_on = "Person 1"
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.append(employee_events(3))
        for table in (db.tables.events, db.tables.outbox, self.projector.table):
            assert await self.count(db, table) == 0

    async def test_commit_notifies_only_after_commit(self, db: Database) -> None:
        calls: list[int] = []
        db.on_commit(lambda: calls.append(1))
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.append(employee_events(1))
                assert calls == []
                raise RuntimeError("abort")
        assert calls == []
        async with db.transaction() as tx:
            await tx.append(employee_events(1))
        assert calls == [1]

    async def test_group_commit_gives_each_command_its_own_outcome(self, db: Database) -> None:
        base = employee_events(1)
        await db.commit(base, expected_version=0)
        agg = base[0].aggregate_id
        racing = [employee_events(1, aggregate_id=agg, start=2) for _ in range(4)]
        fresh = [employee_events(2) for _ in range(20)]
        results = await asyncio.gather(
            *(db.commit(evs, expected_version=1) for evs in racing),
            *(db.commit(evs, expected_version=0) for evs in fresh),
            return_exceptions=True,
        )
        race_results, fresh_results = results[:4], results[4:]
        assert sum(r is None for r in race_results) == 1
        assert all(isinstance(r, ConcurrencyError) for r in race_results if r is not None)
        assert fresh_results == [None] * 20
        assert await self.count(db, db.tables.events) == 1 + 1 + 40
        assert await self.count(db, db.tables.outbox) == 42
        assert await self.count(db, self.projector.table) == 42

    async def test_group_commit_isolates_a_command_the_projection_refuses(
        self, db: Database
    ) -> None:
        self.projector.fail_on = "Person 0"
        good = [employee_events(1, start=1) for _ in range(5)]
        for evs in good:  # "Person 0" is refused; rename the good ones
            evs[0] = evs[0].model_copy(update={"data": {**evs[0].data, "name": "Fine"}})
        bad = employee_events(1)
        results = await asyncio.gather(
            *(db.commit(evs) for evs in good), db.commit(bad), return_exceptions=True
        )
        assert results[:5] == [None] * 5
        assert isinstance(results[5], RuntimeError)
        assert await self.count(db, db.tables.events) == 5
        assert await self.count(db, self.projector.table) == 5


class TestSQLiteEventStore(EventStoreContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"


@pytest.mark.postgres
class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url
