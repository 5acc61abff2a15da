"""Pooled SMTP sessions (``services/sender/smtp_pool.py``) against the real aiosmtpd: one AUTH
for consecutive sends of a mailbox, a dropped or refusing session replaced within the same
attempt, and no session reused across mailboxes or past a rotated or revoked credential."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from services.sender.smtp import Credential
from services.sender.smtp_pool import SmtpPool
from tests.integration.test_sender_support import SenderWorld, world
from tests.support.smtpd import DEFAULT_PASSWORD, DEFAULT_USER

pytestmark = pytest.mark.connected
__all__ = ["world"]


def pool(world: SenderWorld) -> SmtpPool:
    assert world.svc.handlers is not None
    return world.svc.handlers.smtp_pool


async def sent(world: SenderWorld, mailbox_id: str, **body: Any) -> None:
    r = await world.send(mailbox_id, **body)
    assert r.status_code == 201, r.text
    assert r.json()["attempts"] == 1


async def test_consecutive_sends_reuse_one_authenticated_session(world: SenderWorld) -> None:
    mb = await world.mailbox()
    for i in range(5):
        await sent(world, mb, subject=f"n{i}")
    got = await world.smtpd.messages_async(5)
    assert [m.message()["Subject"] for m in got] == [f"n{i}" for i in range(5)]
    assert all(m.auth_user == DEFAULT_USER for m in got)
    assert world.smtpd.auth_attempts == [(DEFAULT_USER, True)]  # one connection, one AUTH
    assert (pool(world).stats.opened, pool(world).stats.reused) == (1, 4)
    assert [n for n, _ in await world.events(mb)] == ["MessageSent"] * 5


async def test_a_failed_transaction_closes_its_session(world: SenderWorld) -> None:
    mb = await world.mailbox()
    await sent(world, mb)
    world.smtpd.reject_recipients()
    r = await world.send(mb, to=["ghost@example.com"])
    assert r.status_code == 422, r.text
    assert pool(world).idle == 0  # the aborted transaction's session is not kept
    world.smtpd.reject_recipients("nobody@example.com")
    await sent(world, mb)
    assert len(world.smtpd.auth_attempts) == 2


async def test_a_dropped_session_is_replaced_transparently(world: SenderWorld) -> None:
    mb = await world.mailbox()
    await sent(world, mb)
    assert pool(world).idle == 1
    world.smtpd.restart()  # the server drops every connection
    await sent(world, mb)
    await sent(world, mb)
    assert len(await world.smtpd.messages_async(3)) == 3
    assert len(world.smtpd.auth_attempts) == 2
    assert [n for n, _ in await world.events(mb)] == ["MessageSent"] * 3


async def test_a_session_refused_at_mail_is_replaced_in_the_same_attempt(
    world: SenderWorld,
) -> None:
    """A pooled session whose MAIL gets 421 (closing) is "stale": nothing was accepted, so the
    same attempt goes on over a new connection; no SendFailed, one message."""
    mb = await world.mailbox()
    await sent(world, mb)
    world.smtpd.fail(421, "mail", times=1)
    await sent(world, mb)
    assert len(await world.smtpd.messages_async(2)) == 2
    assert pool(world).stats.stale == 1
    assert len(world.smtpd.auth_attempts) == 2
    assert [n for n, _ in await world.events(mb)] == ["MessageSent"] * 2


async def test_a_rotated_credential_is_not_reused(world: SenderWorld) -> None:
    mb = await world.mailbox()
    await sent(world, mb)
    world.smtpd.set_password(DEFAULT_USER, "rotated-secret")
    world.creds.by_mailbox[mb] = Credential(DEFAULT_USER, SecretStr("rotated-secret"))
    await sent(world, mb)
    assert world.smtpd.auth_attempts == [(DEFAULT_USER, True), (DEFAULT_USER, True)]
    assert pool(world).idle == 1  # the old credential's session was closed
    key = pool(world).key("acme", mb, world.server(), "e", DEFAULT_USER, "rotated-secret", "x")
    assert "rotated-secret" not in repr(key)  # kept as a keyed digest only
    # Revoked (the source now hands out a credential the server refuses): the still
    # authenticated session of the previous credential must not carry the message.
    world.creds.by_mailbox[mb] = Credential(DEFAULT_USER, SecretStr(DEFAULT_PASSWORD))
    r = await world.send(mb)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "auth_failed"
    assert len(world.smtpd.messages) == 2
    assert pool(world).idle == 0


async def test_mailboxes_never_share_a_session(world: SenderWorld) -> None:
    """Same server and same login, yet each mailbox authenticates its own session."""
    a = await world.mailbox(address="sales@corp.example")
    b = await world.mailbox(address="support@corp.example")
    for mb in (a, b, a, b):
        await sent(world, mb)
    got = await world.smtpd.messages_async(4)
    assert [m.mail_from for m in got] == ["sales@corp.example", "support@corp.example"] * 2
    assert len(world.smtpd.auth_attempts) == 2
    assert pool(world).stats.reused == 2


async def test_idle_sessions_are_swept(world: SenderWorld) -> None:
    mb = await world.mailbox()
    await sent(world, mb)
    p = pool(world)
    assert p.idle == 1
    p.idle_s = 0.0  # everything idle is now past its time: the dispatcher's next tick
    assert world.svc.dispatcher is not None
    await world.svc.dispatcher.tick()
    assert p.idle == 0 and p.stats.retired >= 1
    await sent(world, mb)
    assert len(world.smtpd.auth_attempts) == 2
