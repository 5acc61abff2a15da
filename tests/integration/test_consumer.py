"""Consumer guarantees on a real nats-server: exactly-once apply, retry, dead-letter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Projection
from libs.common.events import Envelope
from libs.common.host import Host
from libs.common.natsserver import NatsServer
from libs.common.service import Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from libs.common.subjects import DLQ_STREAM
from services.audit.tables import entries as audit_entries
from tests.integration.test_write_path import stream_messages
from tests.support.events import employee_events
from tests.support.stack import wait_until

pytestmark = pytest.mark.connected


class Names:
    def __init__(self) -> None:
        self.metadata = MetaData()
        self.table = Table(
            "names",
            self.metadata,
            Column("event_id", String(36), primary_key=True),
            Column("name", String(64)),
        )
        self.attempts: dict[str, int] = {}
        self.poison = "Person 0"

    async def reset(self, conn: AsyncConnection) -> None:
        await conn.execute(delete(self.table))

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        for e in events:
            self.attempts[e.id] = self.attempts.get(e.id, 0) + 1
            if e.data["name"] == self.poison:
                raise ValueError("cannot apply this one")
        await conn.execute(
            insert(self.table), [{"event_id": e.id, "name": e.data["name"]} for e in events]
        )


@asynccontextmanager
async def _names_host(
    tmp_path: Path, nats_server: NatsServer, url: str
) -> AsyncIterator[tuple[Host, Names]]:
    settings = Settings(data_dir=tmp_path, consumer_max_deliver=3, consumer_backoff_s=[0.05, 0.1])
    names = Names()
    db = Database(url, names.metadata)
    svc = Service(
        "names",
        db,
        settings,
        writes_events=False,
        projections=[Projection("names", "mailroom.*.registry.>", names.apply, reset=names.reset)],
    )
    host = Host([svc], settings, nats_server.url)
    await host.start()
    try:
        yield host, names
    finally:
        await host.stop()


@pytest.fixture
async def consumer_host(
    tmp_path: Path, nats_server: NatsServer
) -> AsyncIterator[tuple[Host, Names]]:
    async with _names_host(tmp_path, nats_server, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}") as h:
        yield h


async def _rows(host: Host, names: Names) -> int:
    async with host.services[0].db.read() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(names.table))).scalar() or 0
        )


async def test_poison_event_is_retried_then_dead_lettered_and_the_rest_flows(
    consumer_host: tuple[Host, Names],
) -> None:
    host, names = consumer_host
    js: Any = host.runtime.js
    events = [employee_events(1)[0], *employee_events(3)[1:]]  # the first is "Person 0"
    for e in events:
        await js.publish(e.nats_subject, e.body(), headers=e.to_headers())
    await wait_until(lambda: _has(host, names, 2))
    dlq = await wait_until(lambda: _dlq(js, 1))
    assert dlq[0].headers["Mailroom-Dlq-Reason"] == "ValueError: cannot apply this one"
    assert dlq[0].headers["Mailroom-Dlq-Deliveries"] == "3"
    assert dlq[0].headers["ce-id"] == events[0].id
    assert names.attempts[events[0].id] >= 3
    assert host.services[0].consumers[0].stats.dead_lettered == 1


async def _has(host: Host, names: Names, n: int) -> bool:
    return await _rows(host, names) == n


async def _dlq(js: Any, n: int) -> list[Any] | None:
    msgs = await stream_messages(js, "mailroom-dlq.>", DLQ_STREAM)
    return msgs if len(msgs) >= n else None


async def test_redelivered_and_duplicated_events_apply_once(
    consumer_host: tuple[Host, Names],
) -> None:
    await _applied_once(*consumer_host)


async def test_redelivered_and_duplicated_events_apply_once_on_postgres(
    tmp_path: Path, nats_server: NatsServer, pg_url: str
) -> None:
    """PostgreSQL looks the inbox up by its own query (``ProjectionConsumer._applied_already``)."""
    async with _names_host(tmp_path, nats_server, pg_url) as (host, names):
        await _applied_once(host, names)


async def _applied_once(host: Host, names: Names) -> None:
    names.poison = "nobody"
    js: Any = host.runtime.js
    events = employee_events(5)
    for i, e in enumerate(events + events[:2]):  # same events again, as if past the window
        await js.publish(
            e.nats_subject, e.body(), headers={**e.to_headers(), "Nats-Msg-Id": f"{i}"}
        )
    # Redelivery of already-applied events: reprocess the batch as if the ack was lost.
    await wait_until(lambda: _has(host, names, 5))
    consumer = host.services[0].consumers[0]

    async def dups_seen() -> bool:
        return consumer.stats.duplicates >= 2

    await wait_until(dups_seen)
    msgs = [_FakeRedelivery(e) for e in events]
    await consumer.handle_batch(msgs)
    assert await _rows(host, names) == 5
    assert consumer.stats.duplicates >= 7
    assert all(m.acked for m in msgs)


class _FakeRedelivery:
    """A message object as nats-py delivers it a second time (the first ack was lost)."""

    def __init__(self, e: Envelope) -> None:
        self.subject = e.nats_subject
        self.headers = e.to_headers()
        self.data = e.body()
        self.acked = False
        self._ackd = False

    async def ack(self) -> None:
        self.acked = True


async def test_projection_rebuilds_from_the_audit_store(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    from libs.common.rebuild import rebuild_from_audit
    from tests.support.stack import start_stack

    audit = await start_stack(tmp_path / "audit", nats_server, ("audit",))
    settings = Settings(data_dir=tmp_path)
    names = Names()
    names.poison = "nobody"
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", names.metadata)
    projection = Projection("names", "mailroom.*.registry.>", names.apply, reset=names.reset)
    host = Host(
        [Service("names", db, settings, writes_events=False, projections=[projection])],
        settings,
        nats_server.url,
    )
    await host.start()
    try:
        js: Any = host.runtime.js
        events = employee_events(20) + employee_events(5, tenant="globex")
        for e in events:
            await js.publish(e.nats_subject, e.body(), headers=e.to_headers())
        await wait_until(lambda: _has(host, names, 25))
        async with audit.host.service("audit").db.read() as conn:
            count = select(func.count()).select_from(audit_entries)
            assert (await conn.execute(count)).scalar() == 25
        async with db.read() as conn:
            before = sorted((await conn.execute(select(names.table))).all())
        async with db.write() as conn:  # the projection is lost
            await conn.execute(delete(names.table))
        applied = await rebuild_from_audit(host.runtime.nc, db, projection, page=7)
        assert applied == 25
        async with db.read() as conn:
            assert sorted((await conn.execute(select(names.table))).all()) == before
        # The live consumer does not apply anything twice afterwards.
        again = employee_events(1)[0]
        await js.publish(again.nats_subject, again.body(), headers=again.to_headers())
        await wait_until(lambda: _has(host, names, 26))
    finally:
        await host.stop()
        await audit.client.aclose()
        await audit.host.stop()
