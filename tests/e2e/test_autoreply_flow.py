"""The autoresponder end to end: mail delivered into a real Dovecot mailbox is seen by sync
(MessageReceived with its header facts), the sender answers through aiosmtpd following RFC 3834,
once per correspondent; and an offboarding with an autoreply text answers from the leaver's
mailbox. Registry, sync, sender and audit on a real nats-server; credentials leased."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import func, select

from libs.common.natsserver import NatsServer
from services.sender.app import SenderService
from services.sender.tables import autoreply_pending, sends
from tests.integration.test_sender_support import FAST as SENDER_FAST
from tests.integration.test_sync_support import FAST as SYNC_FAST
from tests.support.dovecot import Dovecot
from tests.support.registry import stop
from tests.support.smtpd import SmtpServer
from tests.support.stack import Stack, start_stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]


@pytest.fixture
async def stack(
    tmp_path: Path,
    nats_server: NatsServer,
    dovecot: Dovecot,
    smtpd: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stack]:
    for k, v in {**SYNC_FAST, **SENDER_FAST}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAILROOM_SYNC_CA_FILE", str(dovecot.ca_path))
    monkeypatch.setenv("MAILROOM_SENDER_CA_FILE", str(smtpd.ca_path))
    s = await start_stack(tmp_path, nats_server, ("registry", "sync", "sender", "audit"))
    try:
        yield s
    finally:
        await stop(s)


def mail(sender: str, subject: str, *extra: str) -> bytes:
    head = [
        f"Return-Path: <{sender}>",
        f"From: Correspondent <{sender}>",
        "To: someone@corp.example",
        f"Subject: {subject}",
        f"Message-ID: <{subject.replace(' ', '-')}@example.org>",
        "Date: Mon, 2 Mar 2026 10:00:00 +0000",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\nplease answer\r\n").encode()


async def employee(stack: Stack, name: str) -> str:
    r = await stack.call("POST", "/v1/employees", json={"name": name, "email": f"{name}@x.io"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def mailbox(stack: Stack, dovecot: Dovecot, smtpd: SmtpServer, owner: str) -> tuple[str, str]:
    """A Dovecot mailbox whose account sends through aiosmtpd with the same login."""
    user, password = dovecot.new_user("ar")
    smtpd.add_user(user, password)
    body = {
        "address": f"{user}@corp.example",
        "protocol": "imap",
        "incoming": {"host": "127.0.0.1", "port": dovecot.imap_port, "security": "starttls"},
        "outgoing": {"host": "127.0.0.1", "port": smtpd.starttls_port, "security": "starttls"},
        "username": user,
        "password": password,
        "owner_id": owner,
        "polling_interval_s": 30,  # new mail arrives by IDLE
    }
    r = await stack.call("POST", "/v1/accounts", json=body)
    assert r.status_code == 201, r.text
    account = str(r.json()["id"])

    async def watched() -> bool:
        sync = await stack.call("GET", f"/v1/sync/mailboxes/{account}")
        sending = await stack.call("GET", f"/v1/mailboxes/{account}/sending")
        state = sync.json().get("status", {}).get("state") if sync.status_code == 200 else None
        return state == "online" and sending.status_code == 200

    await wait_until(watched, timeout=20)
    return account, user


async def seen(stack: Stack, account: str, count: int) -> None:
    """Until sync has reported ``count`` messages and the sender has dealt with all of them."""

    async def reported() -> bool:
        r = await stack.call(
            "GET",
            "/v1/audit/events",
            params={"aggregate_id": account, "type": "mailroom.sync.MessageReceived.v1"},
        )
        items = [i for i in r.json()["items"] if i["event"]["type"].endswith("MessageReceived.v1")]
        return len(items) >= count

    await wait_until(reported, timeout=20)
    sender = cast(SenderService, stack.host.service("sender"))

    async def answered() -> bool:
        js: Any = stack.host.runtime.js
        info = await js.consumer_info("MAILROOM", "sender-autoreply-mail")
        async with sender.db.read() as conn:
            q = select(func.count()).select_from(autoreply_pending)
            waiting = (await conn.execute(q)).scalar() or 0
            busy = sends.c.state.in_(("queued", "delivering"))
            waiting += (await conn.execute(select(func.count()).where(busy))).scalar() or 0
        return bool(info.num_pending == 0 and info.num_ack_pending == 0 and not waiting)

    await wait_until(answered, timeout=10)


async def test_mail_in_dovecot_is_answered_once_following_rfc3834(
    stack: Stack, dovecot: Dovecot, smtpd: SmtpServer
) -> None:
    owner = await employee(stack, "olga")
    account, user = await mailbox(stack, dovecot, smtpd, owner)
    r = await stack.call(
        "PUT", f"/v1/mailboxes/{account}/autoreply", json={"text": "Back on Monday."}
    )
    assert r.status_code == 200, r.text

    dovecot.deliver(user, mail("alice@example.org", "Quote request"))
    [reply] = await smtpd.messages_async(1, timeout=20)
    msg = reply.message()
    assert reply.rcpt_tos == ["alice@example.org"]
    assert reply.mail_from == f"{user}@corp.example" and reply.auth_user == user
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<Quote-request@example.org>"
    assert msg["References"] == "<Quote-request@example.org>"
    assert msg["Subject"] == "Auto: Quote request"
    assert msg.get_content().strip() == "Back on Monday."

    dovecot.deliver(user, mail("alice@example.org", "Follow up"))  # within 7 days: no reply
    dovecot.deliver(user, mail("news@lists.example.org", "Digest", "List-Id: <news.example.org>"))
    dovecot.deliver(user, mail("bulk@example.org", "Offer", "Precedence: bulk"))
    dovecot.deliver(user, mail("ooo@example.org", "Away", "Auto-Submitted: auto-replied"))
    await seen(stack, account, 5)
    assert len(smtpd.messages) == 1

    sent = await stack.call(
        "GET",
        "/v1/audit/events",
        params={"aggregate_id": account, "type": "mailroom.sender.MessageSent.v1"},
    )
    sends = [i for i in sent.json()["items"] if i["event"]["type"].endswith("MessageSent.v1")]
    assert len(sends) == 1


async def test_offboarding_with_an_autoreply_answers_from_the_leavers_mailbox(
    stack: Stack, dovecot: Dovecot, smtpd: SmtpServer
) -> None:
    leaver, successor = await employee(stack, "lea"), await employee(stack, "nick")
    account, user = await mailbox(stack, dovecot, smtpd, leaver)
    r = await stack.call(
        "POST",
        f"/v1/employees/{leaver}/offboard",
        json={"successor_id": successor, "autoreply": "Lea has left; nick@x.io takes over."},
    )
    assert r.status_code == 200, r.text

    async def set_by_offboarding() -> bool:
        got = await stack.call("GET", f"/v1/mailboxes/{account}/autoreply")
        return got.status_code == 200 and got.json()["source"] == "offboarding"

    await wait_until(set_by_offboarding)
    dovecot.deliver(user, mail("bob@example.org", "Contract"))
    [reply] = await smtpd.messages_async(1, timeout=20)
    assert reply.rcpt_tos == ["bob@example.org"] and reply.mail_from == f"{user}@corp.example"
    assert reply.message()["Auto-Submitted"] == "auto-replied"
    assert reply.message().get_content().startswith("Lea has left")

    back = await stack.call("POST", f"/v1/employees/{leaver}/reinstate")
    assert back.status_code == 200, back.text

    async def cleared() -> bool:
        got = await stack.call("GET", f"/v1/mailboxes/{account}/autoreply")
        return got.status_code == 404

    await wait_until(cleared)
