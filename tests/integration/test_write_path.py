"""Write path end to end on a real nats-server: outbox relay → JetStream → consumers → audit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, func, insert, select, text

from libs.common.nats import connect, ensure_streams
from libs.common.natsserver import NatsServer
from libs.common.outbox import OutboxRelay
from libs.common.store.database import Database
from libs.common.subjects import DLQ_STREAM, STREAM
from services.audit.tables import entries
from tests.support.events import employee_events, many_aggregates
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.connected


class Producer:
    """A stand-in writing service: its own database, outbox and relay."""

    def __init__(self, tmp_path: Path, nats: NatsServer) -> None:
        self.db = Database(f"sqlite+aiosqlite:///{tmp_path / 'producer.db'}", MetaData())
        self.nats = nats
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.db.create_all()
        self.nc = await connect(self.nats.url)
        self.js = self.nc.jetstream()
        await ensure_streams(self.js)
        self.relay = OutboxRelay(self.db, self.js, poll_interval=60.0, ack_timeout=1.0)
        self.task = asyncio.create_task(self.relay.run())

    async def write(self, events: list[Any]) -> None:
        async with self.db.transaction() as tx:
            await tx.append(events)

    async def stop(self) -> None:
        self.relay.stop()
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.nc.close()
        await self.db.dispose()


@pytest.fixture
async def producer(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Producer]:
    p = Producer(tmp_path, nats_server)
    await p.start()
    yield p
    await p.stop()


async def stream_messages(js: Any, subject: str = "mailroom.>", stream: str = STREAM) -> list[Any]:
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    out = []
    for _ in range(info.state.messages):
        out.append(await sub.next_msg(timeout=5))
    await sub.unsubscribe()
    return out


async def audit_count(stack: Stack) -> int:
    async with stack.host.service("audit").db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(entries))).scalar() or 0)


async def test_relay_publishes_in_commit_order_with_msg_id(producer: Producer) -> None:
    events = many_aggregates(30)
    for chunk in (events[:10], events[10:]):
        await producer.write(chunk)
    # The relay polls only every 60 s: publishing now proves it was woken by the commit.
    await wait_until(lambda: _published(producer, 30), timeout=5)
    msgs = await stream_messages(producer.js)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [e.id for e in events]
    assert msgs[0].headers["ce-type"] == "mailroom.registry.EmployeeAdded.v1"
    assert json.loads(msgs[0].data) == events[0].data
    assert await producer.relay.depth() == 0


async def _published(producer: Producer, n: int) -> bool:
    return producer.relay.published >= n


async def test_events_wait_in_outbox_while_nats_is_down(producer: Producer) -> None:
    await producer.write(many_aggregates(5))
    await wait_until(lambda: _published(producer, 5))
    producer.nats.kill()
    await producer.write(many_aggregates(7))
    await asyncio.sleep(0.5)
    assert await producer.relay.depth() == 7
    producer.nats.start()
    await wait_until(lambda: _published(producer, 12), timeout=20)
    msgs = await stream_messages(producer.js)
    ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert len(ids) == len(set(ids)) == 12


async def test_audit_stores_each_event_once_in_a_verified_chain(
    producer: Producer, audit_stack: Stack
) -> None:
    events = many_aggregates(40, tenant="acme") + many_aggregates(10, tenant="globex")
    await producer.write(events)
    await wait_until(lambda: _count_is(audit_stack, 50))
    # A re-publish outside JetStream's duplicate window (new Nats-Msg-Id): applied once only.
    dup = events[3]
    await producer.js.publish(
        dup.nats_subject, dup.body(), headers={**dup.to_headers(), "Nats-Msg-Id": "x"}
    )
    await asyncio.sleep(0.5)
    assert await audit_count(audit_stack) == 50

    r = await audit_stack.call("GET", "/v1/audit/verify")
    assert r.status_code == 200 and r.json()["ok"] and r.json()["checked"] == 40, r.text
    r = await audit_stack.call("GET", "/v1/audit/events", params={"limit": 25})
    page = r.json()
    assert len(page["items"]) == 25 and page["next_cursor"]
    assert {i["event"]["tenant_id"] for i in page["items"]} == {"acme"}
    r2 = await audit_stack.call("GET", "/v1/audit/events", params={"cursor": page["next_cursor"]})
    assert len(r2.json()["items"]) == 15 and r2.json()["next_cursor"] is None
    r = await audit_stack.call("GET", "/v1/audit/events", tenant="globex")
    assert len(r.json()["items"]) == 10
    r = await audit_stack.call(
        "GET", "/v1/audit/events", params={"aggregate_id": events[0].aggregate_id}
    )
    assert [i["event"]["id"] for i in r.json()["items"]] == [events[0].id]
    r = await audit_stack.call("GET", "/v1/audit/export")
    lines = r.text.strip().splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["event"]["id"] == events[0].id


async def _count_is(stack: Stack, n: int) -> bool:
    return await audit_count(stack) == n


async def test_tampering_is_named_by_verify(producer: Producer, audit_stack: Stack) -> None:
    await producer.write(many_aggregates(10))
    await wait_until(lambda: _count_is(audit_stack, 10))
    db = audit_stack.host.service("audit").db
    async with db.write() as conn:
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(text("DELETE FROM audit_entries"))
    # An attacker with database access drops the guard and flips one byte of entry 6.
    async with db.write() as conn:
        await conn.execute(text("DROP TRIGGER audit_no_update"))
        row = (
            await conn.execute(
                select(entries.c.position, entries.c.canonical, entries.c.event_id).where(
                    entries.c.tenant_seq == 6
                )
            )
        ).one()
        flipped = bytearray(row.canonical)
        flipped[10] ^= 0x01
        await conn.execute(
            entries.update()
            .where(entries.c.position == row.position)
            .values(canonical=bytes(flipped))
        )
    r = (await audit_stack.call("GET", "/v1/audit/verify")).json()
    assert r["ok"] is False
    assert r["first_bad_tenant_seq"] == 6 and r["first_bad_event_id"] == row.event_id
    assert r["checked"] == 5


async def test_api_requires_a_valid_token(audit_stack: Stack) -> None:
    r = await audit_stack.client.get("/v1/audit/events")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
    r = await audit_stack.client.get("/v1/audit/events", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    r = await audit_stack.call("GET", "/v1/audit/events", role="employee", subject="e1")
    assert r.status_code == 403
    r = await audit_stack.call("GET", "/v1/audit/events", params={"cursor": "zz"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"


async def test_garbage_on_the_bus_is_dead_lettered_never_applied(
    producer: Producer, audit_stack: Stack
) -> None:
    good = employee_events(1)[0]
    js = producer.js
    await js.publish(
        good.nats_subject, b"not json{", headers={**good.to_headers(), "Nats-Msg-Id": "j"}
    )
    await js.publish("mailroom.acme.registry.employee.x.EmployeeAdded", b"{}")  # no headers
    unknown = {**good.to_headers(), "ce-type": "mailroom.registry.Nope.v1", "Nats-Msg-Id": "u"}
    await js.publish(good.nats_subject, good.body(), headers=unknown)
    wrong_tenant = good.nats_subject.replace(".acme.", ".globex.")
    await js.publish(wrong_tenant, good.body(), headers={**good.to_headers(), "Nats-Msg-Id": "w"})
    await producer.write([employee_events(1)[0]])
    await wait_until(lambda: _count_is(audit_stack, 1))
    dlq = await wait_until(lambda: _dlq(js, 4))
    reasons = [m.headers["Mailroom-Dlq-Reason"] for m in dlq]
    assert any("not JSON" in r for r in reasons)
    assert any("no CloudEvents headers" in r for r in reasons)
    assert any("Nope" in r for r in reasons)
    assert any("does not match" in r for r in reasons)
    assert await audit_count(audit_stack) == 1


async def _dlq(js: Any, n: int) -> list[Any] | None:
    msgs = await stream_messages(js, "mailroom-dlq.>", DLQ_STREAM)
    return msgs if len(msgs) >= n else None


async def test_outbox_rows_with_json_headers_are_still_published(producer: Producer) -> None:
    """Rows an earlier version wrote (headers as a JSON object, not a header block) go out
    with the same headers as new rows, in one atomic batch and one by one: an upgrade with
    events waiting in the outbox loses nothing."""
    ob = producer.db.tables.outbox
    sent: list[Any] = []
    for n_old in (40, 2):  # 40 + 3 rows: an atomic batch; 2 + 3: published one by one
        old, new = many_aggregates(n_old), many_aggregates(3)
        rows = [
            {"event_id": e.id, "subject": e.nats_subject, "headers": json.dumps(e.to_headers()),
             "body": e.body()}
            for e in old
        ]  # fmt: skip
        async with producer.db.write() as conn:
            await conn.execute(insert(ob), rows)
        await producer.write(new)  # wakes the relay
        sent += old + new
        total = len(sent)
        await wait_until(lambda: _published(producer, total), timeout=5)  # noqa: B023
    msgs = await stream_messages(producer.js)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [e.id for e in sent]
    for m, e in zip(msgs, sent, strict=True):
        expected = e.to_headers()
        assert {k: v for k, v in m.headers.items() if k in expected} == expected
        assert json.loads(m.data) == e.data
    assert await producer.relay.depth() == 0
