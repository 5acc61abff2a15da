"""One user action is one trace: HTTP → event store → outbox publish → consumers, and RPC."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import MetaData, func, select

from libs.common import telemetry
from libs.common.leases import lease_credential
from libs.common.nats import connect, ensure_streams
from libs.common.natsserver import NatsServer
from libs.common.outbox import OutboxRelay
from libs.common.store.database import Database
from libs.common.subjects import STREAM
from services.audit.tables import entries
from tests.support.events import many_aggregates
from tests.support.registry import imap_account, stop
from tests.support.stack import start_stack, wait_until

pytestmark = [pytest.mark.connected]

_EXPORTER = InMemorySpanExporter()
_INSTALLED: list[bool] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not _INSTALLED:
        telemetry.setup_tracing(exporter=_EXPORTER)
        _INSTALLED.append(True)
    else:
        telemetry._state["enabled"] = True
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        telemetry.disable()
        _EXPORTER.clear()


def _one(found: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(found) == 1, (what, [s.name for s in found])
    return found[0]


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_adding_an_account_is_one_trace_from_http_to_the_audit_store(
    tmp_path: Path, nats_server: NatsServer, spans: InMemorySpanExporter
) -> None:
    canary = f"CANARY-{uuid.uuid4()}"
    s = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    nc = await connect(nats_server.url, name="trace-test")
    try:
        r = await s.call("POST", "/v1/accounts", json=imap_account(password=canary))
        assert r.status_code == 201, r.text
        account = r.json()["id"]

        async def audited(n: int) -> bool:
            async with s.host.service("audit").db.read() as conn:
                return (await conn.execute(select(func.count()).select_from(entries))).scalar() == n

        await wait_until(lambda: audited(1))
        # a credential lease over NATS request-reply, inside the caller's own span
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("sync poll") as poll:
            lease = await lease_credential(telemetry.TracedNats(nc), "acme", account, "sync", "t")
        assert lease.secret.get_secret_value() == canary
        await wait_until(lambda: audited(2))
        await asyncio.sleep(0.2)  # the last consumer spans end right after the commit
    finally:
        await nc.close()
        await stop(s)

    finished = list(spans.get_finished_spans())
    by_id = {sp.context.span_id: sp for sp in finished}
    http = _one([sp for sp in finished if sp.name == "POST /v1/accounts"], "http span")
    assert http.kind == SpanKind.SERVER
    assert http.attributes is not None
    assert http.attributes["http.route"] == "/v1/accounts"
    assert http.attributes["mailroom.tenant_id"] == "acme"
    trace_id = http.context.trace_id
    in_trace = [sp for sp in finished if sp.context.trace_id == trace_id]
    names = {sp.name for sp in in_trace}
    assert "event_store transaction" in names or "event_store commit" in names, names
    publish = _one(
        [sp for sp in in_trace if sp.name == "registry.account.AccountAdded publish"], "publish"
    )
    assert publish.kind == SpanKind.PRODUCER
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == "nats"
    assert publish.attributes["messaging.destination.name"] == "registry.account.AccountAdded"
    process = _one(
        [
            sp
            for sp in in_trace
            if sp.name == "registry.account.AccountAdded process"
            and sp.attributes is not None
            and sp.attributes["mailroom.consumer"] == "audit"
        ],
        "audit consumer span",
    )
    assert process.kind == SpanKind.CONSUMER
    assert process.attributes is not None
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.message.id"] == publish.attributes["messaging.message.id"]
    # connected: audit process → publish → ... → the HTTP request
    chain = _ancestors(process, by_id)
    assert chain[0] == publish.name and chain[-1] == http.name, chain

    # request-reply: the lease is served in the caller's trace, and the CredentialAccessed
    # event it records reaches the audit store in that trace too
    rpc = [sp for sp in finished if sp.context.trace_id == poll.get_span_context().trace_id]
    rpc_names = {sp.name for sp in rpc}
    assert "mailroom-rpc.registry.lease send" in rpc_names, rpc_names
    server = _one([sp for sp in rpc if sp.name == "mailroom-rpc.registry.lease process"], "rpc")
    assert server.kind == SpanKind.SERVER
    client = _one([sp for sp in rpc if sp.name == "mailroom-rpc.registry.lease send"], "client")
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    accessed = [
        sp
        for sp in rpc
        if sp.name == "registry.account.CredentialAccessed process"
        and sp.attributes is not None
        and sp.attributes["mailroom.consumer"] == "audit"
    ]
    assert accessed, rpc_names

    # names are bounded: no ids in any span name; nothing secret anywhere in span data
    dump = "\n".join(sp.to_json() for sp in finished)
    for sp in finished:
        assert account not in sp.name and "acme" not in sp.name, sp.name
    assert account in dump  # ids are in attributes
    assert canary not in dump
    assert "Bearer" not in dump and s.token() not in dump
    json.loads(finished[0].to_json())


async def test_bare_rpc_subscriptions_continue_the_callers_trace(
    nats_server: NatsServer, spans: InMemorySpanExporter
) -> None:
    server_nc = telemetry.TracedNats(await connect(nats_server.url, name="srv"))
    client_nc = telemetry.TracedNats(await connect(nats_server.url, name="cli"))

    async def echo(msg: object) -> None:
        await msg.respond(b"pong")  # type: ignore[attr-defined]

    try:
        await server_nc.subscribe("mailroom-rpc.test.echo", queue="t", cb=echo)
        await server_nc.flush()
        reply = await client_nc.request("mailroom-rpc.test.echo", b"ping", timeout=2)
        assert reply.data == b"pong"
    finally:
        await server_nc.close()
        await client_nc.close()
    finished = list(spans.get_finished_spans())
    client = _one([sp for sp in finished if sp.name == "mailroom-rpc.test.echo send"], "c")
    server = _one([sp for sp in finished if sp.name == "mailroom-rpc.test.echo process"], "s")
    assert client.kind == SpanKind.CLIENT and server.kind == SpanKind.SERVER
    assert server.parent is not None and server.parent.span_id == client.context.span_id


def test_events_emitted_while_applying_continue_their_causes_trace(
    spans: InMemorySpanExporter,
) -> None:
    from libs.common.events import CommandContext, EmployeeOffboarded, Envelope

    tracer = trace.get_tracer("test")
    causes = []
    for n in range(2):  # two events of two different traces, applied in one batch
        with tracer.start_as_current_span(f"request {n}"):
            causes.append(
                Envelope.wrap(
                    EmployeeOffboarded(),
                    CommandContext("acme", "admin:admin"),
                    aggregate_id=f"e{n}",
                    aggregate_version=1,
                )
            )
    assert all(c.traceparent for c in causes)
    with telemetry.processing("authz-registry", causes):
        emitted = [
            Envelope.wrap(
                EmployeeOffboarded(),
                CommandContext("acme", "service:authz", c.correlation_id, c.id),
                aggregate_id=f"x{i}",
                aggregate_version=1,
            )
            for i, c in enumerate(causes)
        ]
    finished = {sp.context.span_id: sp for sp in spans.get_finished_spans()}
    for cause, effect in zip(causes, emitted, strict=True):
        assert cause.traceparent and effect.traceparent
        assert effect.traceparent.split("-")[1] == cause.traceparent.split("-")[1]  # same trace
        parent = finished[int(effect.traceparent.split("-")[2], 16)]
        assert parent.name == "registry.employee.EmployeeOffboarded process"


async def test_a_batch_published_atomically_carries_each_publish_span(
    tmp_path: Path, nats_server: NatsServer, spans: InMemorySpanExporter
) -> None:
    """40 events of one commit go out as one atomic batch: each stored message names its own
    publish span as parent, and keeps every CloudEvents header of its event."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", MetaData())
    await db.create_all()
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js)
    relay = OutboxRelay(db, js)
    events = many_aggregates(40)
    try:
        async with db.transaction() as tx:
            await tx.append(events)
        assert await relay.drain_once() == 40
        sub = await js.subscribe("mailroom.>", stream=STREAM, ordered_consumer=True)
        msgs = [await sub.next_msg(timeout=5) for _ in events]
        await sub.unsubscribe()
    finally:
        await nc.close()
        await db.dispose()
    publish = {
        sp.context.span_id: sp for sp in spans.get_finished_spans() if sp.name.endswith("publish")
    }
    assert len(publish) == 40
    for m, e in zip(msgs, events, strict=True):
        assert m.headers is not None
        assert {k: m.headers[k] for k in e.to_headers()} == e.to_headers()
        span = publish[int(m.headers["traceparent"].split("-")[2], 16)]
        assert span.attributes is not None
        assert span.attributes["messaging.message.id"] == e.id
        assert span.attributes["messaging.batch.message_count"] == 40
