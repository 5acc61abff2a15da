"""The autoresponder in the sender service: its API, answering MessageReceived through the
normal send path (aiosmtpd), RFC 3834 refusals, redelivery and crashes, offboarding, limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select

from libs.common.events import (
    CommandContext,
    EmployeeOffboarded,
    EmployeeReinstated,
    Envelope,
    MessageReceived,
)
from libs.common.ids import new_id
from services.sender.autoreply_responder import Responder
from services.sender.tables import autoreply_pending, sends
from tests.integration.test_sender_support import SenderWorld, world
from tests.support.stack import wait_until

pytestmark = pytest.mark.connected
__all__ = ["world"]
_uids = iter(range(1, 10_000))


async def received(
    world: SenderWorld, mailbox_id: str, sender: str = "alice@example.org", **facts: Any
) -> Envelope:
    """Publish a MessageReceived as sync would (metadata only)."""
    uid = next(_uids)
    doc = {
        "folder": "INBOX",
        "uidvalidity": 7,
        "uid": uid,
        "message_id": f"<m{uid}@example.org>",
        "from": f"Someone <{sender}>",
        "to": ["sales@corp.example"],
        "subject": f"Question {uid}",
        **facts,
    }
    world.versions[f"sync:{mailbox_id}"] = version = world.versions.get(f"sync:{mailbox_id}", 0) + 1
    env = Envelope.wrap(
        MessageReceived.model_validate(doc),
        CommandContext("acme", "service:sync"),
        aggregate_id=mailbox_id,
        aggregate_version=version,
    )
    await republish(world, env)
    return env


async def republish(world: SenderWorld, env: Envelope, msg_id: str | None = None) -> None:
    """Publish ``env``; with ``msg_id``, again as a new stream message (a redelivery)."""
    headers = env.to_headers()
    if msg_id is not None:
        headers["Nats-Msg-Id"] = msg_id
    js: Any = world.stack.host.runtime.js
    await js.publish(env.nats_subject, env.body(), headers=headers)


async def autoreply(world: SenderWorld, mb: str, **body: Any) -> dict[str, Any]:
    r = await world.stack.call("PUT", f"/v1/mailboxes/{mb}/autoreply", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def consumed(world: SenderWorld, durable: str = "sender-autoreply-mail") -> None:
    """Until the mail consumer has applied everything published so far."""

    async def idle() -> bool:
        js: Any = world.stack.host.runtime.js
        info = await js.consumer_info("MAILROOM", durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await wait_until(idle, timeout=10)


async def settled(world: SenderWorld) -> None:
    """Until the mail consumer is idle and every queued reply has been submitted and sent."""
    await consumed(world)

    async def submitted() -> bool:
        async with world.svc.db.read() as conn:
            q = select(func.count()).select_from(autoreply_pending)
            busy = select(func.count()).where(sends.c.state.in_(("queued", "delivering")))
            return not (await conn.execute(q)).scalar() and not (await conn.execute(busy)).scalar()

    await wait_until(submitted, timeout=10)


async def test_the_api_sets_reads_and_clears_with_events(world: SenderWorld) -> None:
    mb = await world.mailbox()
    url = f"/v1/mailboxes/{mb}/autoreply"
    assert (await world.stack.call("GET", url)).json()["error"]["code"] == "no_autoreply"
    body = {
        "text": "I am away until Monday.",
        "html": "<p onclick='x()'>Away<script>alert(1)</script></p>",
        "subject": "Out of office",
        "starts_at": "2026-01-01T00:00:00+01:00",
        "interval_days": 3,
    }
    first = await autoreply(world, mb, **body)
    assert first["html"] == "<p>Away</p>" and first["source"] == "api"
    assert first["starts_at"].startswith("2025-12-31T23:00:00") and first["active"] is True
    again = await autoreply(world, mb, **body)  # idempotent: nothing changes
    assert again["set_at"] == first["set_at"]
    got = (await world.stack.call("GET", url)).json()
    assert got["text"] == "I am away until Monday." and got["interval_days"] == 3
    bad = [
        {"text": ""},
        {"text": "x", "subject": "a\r\nBcc: evil@example.com"},
        {"text": "x", "starts_at": "2026-01-02T00:00:00"},  # no time zone
        {"text": "x", "starts_at": "2026-01-02T00:00:00Z", "ends_at": "2026-01-01T00:00:00Z"},
        {"text": "x", "interval_days": 0},
        {"text": "x", "unknown": 1},
    ]
    for b in bad:
        r = await world.stack.call("PUT", url, json=b)
        assert r.status_code == 422, (b, r.text)
        assert set(r.json()["error"]) >= {"code", "message"}
    employee = await world.stack.call("PUT", url, json={"text": "x"}, role="employee", subject="e1")
    assert employee.status_code == 403
    other = await world.stack.call("PUT", url, json={"text": "x"}, tenant="globex")
    assert other.status_code == 404
    assert (await world.stack.call("DELETE", url)).status_code == 204
    assert (await world.stack.call("DELETE", url)).status_code == 204  # idempotent
    assert (await world.stack.call("GET", url)).status_code == 404
    names = [n for n, _ in await world.events(mb)]
    assert names == ["AutoreplySet", "AutoreplyCleared"]


async def test_new_mail_is_answered_once_per_correspondent(world: SenderWorld) -> None:
    mb = await world.mailbox(send_as_name="Sales", send_as_address="sales@corp.example")
    await autoreply(world, mb, text="Thanks, we answer within a day.", html="<p>Thanks</p>")
    first = await received(world, mb, "Alice@Example.org")
    [got] = await world.smtpd.messages_async(1, timeout=10)
    msg = got.message()
    assert got.rcpt_tos == ["alice@example.org"] and got.mail_from == "sales@corp.example"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["In-Reply-To"] == first.data["message_id"]
    assert msg["References"] == first.data["message_id"]
    assert msg["Subject"] == f"Auto: {first.data['subject']}"
    assert msg["To"] == "alice@example.org" and "sales@corp.example" in msg["From"]
    assert msg.get_body(("plain",)).get_content().startswith("Thanks, we answer")  # type: ignore[union-attr]

    await received(world, mb, "alice@example.org")  # the same correspondent again: no reply
    await received(world, mb, "list@example.org", precedence="bulk")
    await received(world, mb, "news@example.org", mailing_list=True)
    await received(world, mb, "ooo@example.org", auto_submitted="auto-replied")
    await received(world, mb, "bob@example.org", return_path="")  # a bounce
    await received(world, mb, "noreply@example.org")
    await received(world, mb, "sales@corp.example")  # itself
    await received(world, mb, "carol@example.org", folder="Junk")
    await settled(world)
    await asyncio.sleep(0.3)
    assert len(world.smtpd.messages) == 1
    events = [(n, d) for n, d in await world.events(mb) if n == "MessageSent"]
    assert len(events) == 1 and events[0][1]["idempotency_key"].startswith("autoreply:")

    await received(world, mb, "dave@example.org", return_path="dave.real@example.org")
    got2 = (await world.smtpd.messages_async(2, timeout=10))[1]
    assert got2.rcpt_tos == ["dave.real@example.org"]  # RFC 3834 §4: the Return-Path


async def test_redelivery_and_a_crashed_responder_send_nothing_twice(world: SenderWorld) -> None:
    mb = await world.mailbox()
    await autoreply(world, mb, text="Away.")
    assert world.svc.responder is not None and world.svc.handlers is not None
    await world.svc.responder.stop()  # this test drives a responder itself
    env = await received(world, mb, "erin@example.org")

    async def queued() -> list[Any] | None:
        async with world.svc.db.read() as conn:
            rows = (await conn.execute(select(autoreply_pending))).all()
        return list(rows) or None

    rows = await wait_until(queued)
    assert rows is not None
    [row] = rows
    # The same event again as a new stream message: the consumer's inbox row drops it.
    await republish(world, env, msg_id=new_id())
    await consumed(world)
    assert len(await queued() or []) == 1
    responder = Responder(world.svc.db, world.svc.handlers, 0.1)
    assert await responder.tick() == 1 and responder.submitted == 1
    [got] = await world.smtpd.messages_async(1, timeout=10)
    assert got.message()["Auto-Submitted"] == "auto-replied"
    # A responder that died after submitting but before forgetting the row: the next one
    # submits again with the same Idempotency-Key and the send path answers the recorded send.
    async with world.svc.db.write() as conn:
        await conn.execute(autoreply_pending.insert().values(**row._mapping))
    assert await responder.tick() == 1 and responder.submitted == 1  # a replay, not a send
    assert await queued() is None
    await asyncio.sleep(0.5)
    assert len(world.smtpd.messages) == 1
    assert [n for n, _ in await world.events(mb)].count("MessageSent") == 1


async def test_offboarding_sets_the_autoreply_and_reinstating_clears_it(
    world: SenderWorld,
) -> None:
    leaver = await world.employee("Lea Leaver", "lea@corp.example")
    mb = await world.mailbox(address="lea@corp.example", owner_id=leaver)
    offboarded = EmployeeOffboarded(autoreply="Lea has left; write to team@corp.example.",
                                    mailbox_ids=[mb])  # fmt: skip
    await world.publish(offboarded, leaver)

    async def set_() -> dict[str, Any] | None:
        r = await world.stack.call("GET", f"/v1/mailboxes/{mb}/autoreply")
        return r.json() if r.status_code == 200 else None

    state = await wait_until(set_)
    assert state is not None and state["source"] == "offboarding" and state["employee_id"] == leaver
    envs = await world.svc.db.load("acme", mb)
    [set_env] = [e for e in envs if e.event_name == "AutoreplySet"]
    employee_events = await _stream_events(world, leaver)
    assert set_env.causation_id == employee_events["EmployeeOffboarded"]
    await received(world, mb, "frank@example.org")
    [got] = await world.smtpd.messages_async(1, timeout=10)
    assert got.mail_from == "lea@corp.example" and got.rcpt_tos == ["frank@example.org"]
    assert got.message().get_content().startswith("Lea has left")

    await world.publish(EmployeeReinstated(), leaver)

    async def cleared() -> bool:
        r = await world.stack.call("GET", f"/v1/mailboxes/{mb}/autoreply")
        return r.status_code == 404

    await wait_until(cleared)
    names = [e.event_name for e in await world.svc.db.load("acme", mb)]
    assert names.count("AutoreplyCleared") == 1
    await received(world, mb, "grace@example.org")
    await settled(world)
    await asyncio.sleep(0.3)
    assert len(world.smtpd.messages) == 1


async def _stream_events(world: SenderWorld, aggregate_id: str) -> dict[str, str]:
    """Event name -> id of the events the test published for an aggregate (from the audit)."""

    async def found() -> dict[str, str] | None:
        r = await world.stack.call("GET", "/v1/audit/events", params={"aggregate_id": aggregate_id})
        items = r.json()["items"]
        names = {i["event"]["type"].split(".")[2]: i["event"]["id"] for i in items}
        return names if "EmployeeOffboarded" in names else None

    names = await wait_until(found)
    assert names is not None
    return names


async def test_an_autoreply_over_the_daily_limit_is_not_sent(world: SenderWorld) -> None:
    mb = await world.mailbox(daily_send_limit=1)
    assert (await world.send(mb)).status_code == 201
    await autoreply(world, mb, text="Away.")
    await received(world, mb, "henry@example.org")

    async def refused() -> list[dict[str, Any]] | None:
        failed = [d for n, d in await world.events(mb) if n == "SendFailed"]
        return failed or None

    failed = await wait_until(refused)
    assert failed is not None
    [failure] = failed
    assert failure["reason_class"] == "limit_reached"
    assert failure["idempotency_key"].startswith("autoreply:")
    await settled(world)
    assert len(world.smtpd.messages) == 1  # only the first, ordinary send
