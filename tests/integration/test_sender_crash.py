"""A sender replica dies in the middle of a send; another one (here: the restarted process on
the same database) finishes it. Exactly once where SMTP allows it; the one ambiguous window
(the server accepted, the outcome was not yet recorded) redelivers the same bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from libs.common.ids import new_id
from libs.common.natsserver import NatsServer
from services.sender.models import MessageIn
from services.sender.ports import Requester
from tests.integration.test_sender_support import FAST, SenderWorld
from tests.support.smtpd import SmtpServer
from tests.support.stack import start_stack, wait_until

pytestmark = pytest.mark.connected


async def _world(
    tmp_path: Path, nats: NatsServer, smtpd: SmtpServer, before: SenderWorld | None = None
) -> SenderWorld:
    w = SenderWorld(await start_stack(tmp_path, nats, ("sender", "audit")), smtpd)
    if before is not None:  # the restarted process knows the same credentials
        w.creds.by_mailbox.update(before.creds.by_mailbox)
    return w


def _submit(w: SenderWorld, mailbox_id: str, key: str) -> asyncio.Task[Any]:
    """The handler behind ``POST .../messages`` (the body ``SenderWorld.send`` posts), run
    as a task that a "crash" can kill where it stands (an HTTP request would be finished by
    the ASGI app even after its client gave up)."""
    assert w.svc.handlers is not None
    msg = MessageIn.model_validate(
        {"to": ["alice@example.com"], "subject": "Hello", "text": "Hi Alice"}
    )
    who = Requester("acme", "admin:admin", new_id())
    return asyncio.create_task(w.svc.handlers.submit(who, mailbox_id, key, msg))


async def _crash(w: SenderWorld, request: asyncio.Task[Any]) -> None:
    """Kill the request mid-flight and stop the process without recording anything more."""
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    await w.stack.client.aclose()
    await w.stack.host.stop()


@pytest.fixture
def crashy(monkeypatch: pytest.MonkeyPatch, smtpd: SmtpServer) -> None:
    short = {"MAILROOM_SENDER_CLAIM_S": "4", "MAILROOM_SENDER_ATTEMPT_DEADLINE_S": "2"}
    for k, v in {**FAST, **short}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAILROOM_SENDER_CA_FILE", str(smtpd.ca_path))


async def test_crash_before_the_data_is_sent_delivers_exactly_once(
    tmp_path: Path, nats_server: NatsServer, smtpd: SmtpServer, crashy: None
) -> None:
    a = await _world(tmp_path, nats_server, smtpd)
    mb = await a.mailbox()
    smtpd.hang("rcpt")
    request = _submit(a, mb, "crash-1")
    await wait_until(lambda: _attempted(smtpd))
    await _crash(a, request)
    smtpd.release()

    b = await _world(tmp_path, nats_server, smtpd, a)
    try:
        # The client retries: the send is recorded and claimed by the dead process, so the
        # retry is answered from the record and delivers nothing itself.
        retry = await b.send(mb, "crash-1")
        assert retry.headers["Idempotent-Replayed"] == "true"
        if retry.json()["status"] == "sending" and retry.json()["attempts"] == 1:
            assert retry.status_code == 202 and smtpd.messages == []
        # (on a slow machine the claim may already have expired and been taken over)
        # Once the dead claim expires, the surviving replica delivers it.
        done = await b.status(mb, retry.json()["id"], "sent", timeout=15)
        assert done["attempts"] == 2
        again = await b.send(mb, "crash-1")
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        await asyncio.sleep(0.5)
        assert len(smtpd.messages) == 1
    finally:
        await b.stack.client.aclose()
        await b.stack.host.stop()


async def test_crash_after_acceptance_redelivers_the_same_message(
    tmp_path: Path, nats_server: NatsServer, smtpd: SmtpServer, crashy: None
) -> None:
    """The documented at-least-once window: the server said 250 to the data, then the process
    died before the outcome was committed. The message goes out again — byte for byte the same,
    with the same Message-ID, so recipients' clients can fold the two."""
    a = await _world(tmp_path, nats_server, smtpd)
    mb = await a.mailbox()
    assert a.svc.handlers is not None
    stuck = asyncio.Event()

    async def never(*args: Any, **kwargs: Any) -> Any:
        stuck.set()
        await asyncio.Event().wait()

    a.svc.handlers._record = never  # type: ignore[method-assign]
    request = _submit(a, mb, "crash-2")
    await asyncio.wait_for(stuck.wait(), 10)
    await _crash(a, request)
    assert len(smtpd.messages) == 1

    b = await _world(tmp_path, nats_server, smtpd, a)
    try:
        retry = await b.send(mb, "crash-2")
        assert retry.status_code in (201, 202)
        await b.status(mb, retry.json()["id"], "sent", timeout=15)
        first, second = smtpd.messages
        assert first.data == second.data
        assert first.message()["Message-ID"] == retry.json()["message_id"]
        assert [n for n, _ in await b.events(mb)] == ["MessageSent"]
    finally:
        await b.stack.client.aclose()
        await b.stack.host.stop()


async def _attempted(smtpd: SmtpServer) -> bool:
    return bool(smtpd.auth_attempts)
