"""Sending when things go wrong: refusals, bad credentials, a server that is down or hangs,
the daily limit, disabled and deleted mailboxes, other tenants."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from libs.common.events import AccountDeleted, AccountDisabled, AccountReactivated
from services.sender.smtp import Credential
from tests.integration.test_sender_support import SenderWorld, world

pytestmark = pytest.mark.connected
__all__ = ["world"]


async def test_recipient_refused_is_permanent_and_not_retried(world: SenderWorld) -> None:
    mb = await world.mailbox()
    world.smtpd.reject_recipients()
    r = await world.send(mb, to=["nobody@example.com", "ghost@example.com"])
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "recipient_refused"
    send = err["details"]["send"]
    assert send["status"] == "failed" and send["attempts"] == 1
    assert send["refused"] == ["ghost@example.com", "nobody@example.com"]
    await asyncio.sleep(1.0)  # several dispatcher rounds: nothing is retried
    rec = await world.record(mb, send["id"])
    assert (rec.state, rec.attempts) == ("failed", 1)
    assert world.smtpd.messages == []
    [(name, data)] = await world.events(mb)
    assert name == "SendFailed"
    assert (data["reason_class"], data["permanent"]) == ("recipient_refused", True)
    assert data["refused"] == ["ghost@example.com", "nobody@example.com"]
    replay = await world.send(
        mb, send["idempotency_key"], to=["nobody@example.com", "ghost@example.com"]
    )
    assert replay.status_code == 422 and replay.headers["Idempotent-Replayed"] == "true"


async def test_partly_refused_recipients_still_get_the_message(world: SenderWorld) -> None:
    mb = await world.mailbox()
    world.smtpd.reject_recipients("ghost@example.com")
    r = await world.send(mb, to=["alice@example.com", "ghost@example.com"])
    assert r.status_code == 201, r.text
    assert r.json()["refused"] == ["ghost@example.com"]
    [got] = await world.smtpd.messages_async(1)
    assert got.rcpt_tos == ["alice@example.com"]
    [(name, data)] = await world.events(mb)
    assert name == "MessageSent" and data["refused"] == ["ghost@example.com"]
    assert data["recipients"] == 1


async def test_wrong_password_is_auth_failed(world: SenderWorld) -> None:
    mb = await world.mailbox()
    world.creds.by_mailbox[mb] = Credential("sender@example.test", SecretStr("wrong"))
    r = await world.send(mb)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "auth_failed"
    [(name, data)] = await world.events(mb)
    assert (name, data["reason_class"], data["permanent"]) == ("SendFailed", "auth_failed", True)
    assert "wrong" not in str(data)


async def test_server_down_then_restarted_is_retried_and_delivered_once(
    world: SenderWorld,
) -> None:
    mb = await world.mailbox()
    world.smtpd.stop()
    try:
        r = await world.send(mb)
        assert r.status_code == 202, r.text
        out = r.json()
        assert out["status"] == "retrying" and out["reason_class"] == "server_down"
        await asyncio.sleep(1.0)  # a few more failed attempts
    finally:
        world.smtpd.start()
    done = await world.status(mb, out["id"], "sent")
    assert done["attempts"] >= 2
    await asyncio.sleep(0.5)
    assert len(world.smtpd.messages) == 1
    events = await world.events(mb)
    names = [n for n, _ in events]
    assert names[-1] == "MessageSent" and set(names[:-1]) == {"SendFailed"}
    for _, data in events[:-1]:
        assert (data["reason_class"], data["permanent"]) == ("server_down", False)
        assert data["retry_at"] is not None


async def test_transient_4xx_is_retried(world: SenderWorld) -> None:
    mb = await world.mailbox()
    world.smtpd.fail(451, "data", times=2)
    r = await world.send(mb)
    assert r.status_code == 202, r.text
    done = await world.status(mb, r.json()["id"], "sent")
    assert done["attempts"] == 3
    assert len(world.smtpd.messages) == 1


async def test_server_that_hangs_times_out_and_is_retried(world: SenderWorld) -> None:
    mb = await world.mailbox()
    world.smtpd.hang("data")
    started = asyncio.get_running_loop().time()
    r = await world.send(mb)
    assert r.status_code == 202, r.text
    assert asyncio.get_running_loop().time() - started < 5  # the command timeout, not forever
    assert "timed out" in r.json()["detail"]
    world.smtpd.release()
    await world.status(mb, r.json()["id"], "sent")
    await asyncio.sleep(0.5)
    assert len(world.smtpd.messages) == 1


async def test_daily_limit_is_429_with_retry_after(world: SenderWorld) -> None:
    mb = await world.mailbox(daily_send_limit=2)
    before = datetime.now(UTC)
    assert (await world.send(mb)).status_code == 201
    assert (await world.send(mb)).status_code == 201
    r = await world.send(mb, "over")
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "daily_limit_reached"
    retry_after = int(r.headers["Retry-After"])
    assert 86_000 < retry_after <= 86_400
    assert err["details"]["retry_after"] == retry_after
    frees = datetime.fromisoformat(err["details"]["frees_at"])
    assert before + timedelta(hours=24) <= frees <= datetime.now(UTC) + timedelta(hours=24)
    assert len(world.smtpd.messages) == 2
    names = [(n, d.get("reason_class")) for n, d in await world.events(mb)]
    assert names[-1] == ("SendFailed", "limit_reached")
    view = (await world.stack.call("GET", f"/v1/mailboxes/{mb}/sending")).json()
    assert (view["daily_limit"], view["sent_last_24h"], view["remaining"]) == (2, 2, 0)
    # the key was not used up: the same request may succeed once the window frees a slot
    assert (await world.send(mb, "over")).status_code == 429


async def test_failed_sends_do_not_use_up_the_limit(world: SenderWorld) -> None:
    mb = await world.mailbox(daily_send_limit=1)
    world.smtpd.reject_recipients()
    assert (await world.send(mb)).status_code == 422
    world.smtpd.reset()
    assert (await world.send(mb)).status_code == 201


async def test_disabled_and_deleted_mailboxes_are_refused(world: SenderWorld) -> None:
    mb = await world.mailbox()
    await world.publish(AccountDisabled(reason="left"), mb)
    await world.applied(lambda repo: _status(repo, mb, "disabled"))
    r = await world.send(mb)
    assert r.status_code == 409 and r.json()["error"]["code"] == "mailbox_disabled"
    await world.publish(AccountReactivated(), mb)
    await world.applied(lambda repo: _status(repo, mb, "active"))
    assert (await world.send(mb)).status_code == 201
    await world.publish(AccountDeleted(address="sales@corp.example"), mb)
    await world.applied(lambda repo: _status(repo, mb, "deleted"))
    r = await world.send(mb)
    assert r.status_code == 409 and r.json()["error"]["code"] == "mailbox_deleted"
    assert len(world.smtpd.messages) == 1


async def _status(repo: object, mb: str, status: str) -> bool:
    found = await repo.mailbox(mb)  # type: ignore[attr-defined]
    return found is not None and found.status == status


async def test_cross_tenant_probe_finds_nothing(world: SenderWorld) -> None:
    mb = await world.mailbox()
    sent = (await world.send(mb)).json()
    probe = await world.send(mb, tenant="evil")
    assert probe.status_code == 404 and probe.json()["error"]["code"] == "not_found"
    look = await world.stack.call("GET", f"/v1/mailboxes/{mb}/messages/{sent['id']}", tenant="evil")
    assert look.status_code == 404
    view = await world.stack.call("GET", f"/v1/mailboxes/{mb}/sending", tenant="evil")
    assert view.status_code == 404
    # the same key in another tenant is another key: still nothing leaks or replays
    assert (await world.send(mb, sent["idempotency_key"], tenant="evil")).status_code == 404
    assert len(world.smtpd.messages) == 1


async def test_employees_without_a_grant_are_forbidden(world: SenderWorld) -> None:
    mb = await world.mailbox()
    r = await world.send(mb, role="employee", subject_="someone")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert world.smtpd.messages == []
