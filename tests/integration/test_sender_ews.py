"""Sending from Exchange / Office 365 mailboxes over EWS through the whole path: the account and
its secret in the registry, the lease, ``POST /v1/mailboxes/{id}/messages``, MessageSent /
SendFailed.

Exchange cannot run here: the server is tests/support/ews_server.py, a local HTTPS server on
loopback that answers with EWS responses as Exchange 2016 sends them (CreateItem, FindItem,
the ErrorServerBusy fault, ErrorInvalidRecipients) and checks each request's operation,
mailbox and authentication; it also plays Microsoft Entra ID's token endpoint.
"""

# ruff: noqa: F811 -- the ews_server fixture is a parameter here

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from email import message_from_bytes
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from libs.common.natsserver import NatsServer
from services.sender.app import SenderService
from services.sender.repository import SenderRepository
from tests.support.ews_server import EwsServer, ews_server  # noqa: F401 -- fixture
from tests.support.registry import stop
from tests.support.sending import SENDER_ENV
from tests.support.stack import Stack, start_stack, wait_until
from tests.support.tlsca import session_pki

pytestmark = [pytest.mark.connected]
SALES = "sales@corp.example"
_keys = itertools.count(1)


@pytest.fixture
async def stack(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    env = {**SENDER_ENV, "MAILROOM_SENDER_RETRY_BACKOFF_S": "[0.3, 0.5]"}
    for k, v in {**env, "MAILROOM_SENDER_CA_FILE": str(session_pki().ca_path)}.items():
        monkeypatch.setenv(k, v)
    s = await start_stack(tmp_path, nats_server, ("registry", "authz", "sender", "audit"))
    try:
        yield s
    finally:
        await stop(s)


async def mailbox(stack: Stack, server: EwsServer, **body: Any) -> str:
    doc = {"address": SALES, "protocol": "exchange", "incoming": {"url": server.url}, **body}
    r = await stack.call("POST", "/v1/accounts", json=doc)
    assert r.status_code == 201, r.text
    mailbox_id = str(r.json()["id"])
    sender = cast(SenderService, stack.host.service("sender"))

    async def known() -> bool:
        async with sender.db.read() as conn:
            found = await SenderRepository(conn, "acme").mailbox(mailbox_id) is not None
        r = await stack.call("GET", f"/v1/mailboxes/{mailbox_id}/sending")
        return found and r.status_code == 200

    await wait_until(known)
    return mailbox_id


async def send(stack: Stack, mailbox_id: str, **body: Any) -> httpx.Response:
    body.setdefault("to", ["alice@example.com"])
    body.setdefault("subject", "Quarterly numbers")
    body.setdefault("text", "Attached, as promised.")
    return await stack.call(
        "POST",
        f"/v1/mailboxes/{mailbox_id}/messages",
        json=body,
        headers={"Idempotency-Key": f"ews-{next(_keys)}"},
    )


async def events(stack: Stack, mailbox_id: str) -> list[tuple[str, dict[str, Any]]]:
    sender = cast(SenderService, stack.host.service("sender"))
    return [(e.event_name, e.data) for e in await sender.db.load("acme", mailbox_id)]


async def test_sent_with_create_item_and_a_copy_in_sent_items(
    stack: Stack, ews_server: EwsServer
) -> None:
    password = ews_server.add_mailbox(SALES, "CORP\\sales")
    mb = await mailbox(stack, ews_server, username="CORP\\sales", password=password)
    r = await send(stack, mb, cc=["bob@example.com"], bcc=["boss@example.com"])
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "sent"
    [sent] = ews_server.sent
    assert sent["mailbox"] == SALES and sent["bcc"] == ["boss@example.com"]
    assert sorted(sent["recipients"]) == [
        "alice@example.com",
        "bob@example.com",
        "boss@example.com",
    ]
    msg = message_from_bytes(sent["raw"])
    assert msg["Subject"] == "Quarterly numbers" and SALES in msg["From"]
    assert msg["Bcc"] is None  # Bcc travels as BccRecipients, never in the headers
    assert ews_server.ops() == ["CreateItem"] and not ews_server.violations
    assert ews_server.requests[0].auth == "basic:CORP\\sales"
    [(name, data)] = await events(stack, mb)
    assert name == "MessageSent" and data["via"] == "ews" and data["recipients"] == 3
    box = ews_server.mailboxes[SALES]
    assert [i.folder for i in box.items.values()] == [box.well_known["sentitems"]]


async def test_wrong_password_and_refused_recipients_are_permanent(
    stack: Stack, ews_server: EwsServer
) -> None:
    ews_server.add_mailbox(SALES, "CORP\\sales", password="right")
    mb = await mailbox(stack, ews_server, username="CORP\\sales", password="wrong")
    r = await send(stack, mb)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "auth_failed"
    r = await stack.call("PUT", f"/v1/accounts/{mb}/credential", json={"password": "right"})
    assert r.status_code in (200, 204), r.text
    ews_server.refuse_recipients.add("ghost@example.com")
    r = await send(stack, mb, to=["ghost@example.com"])
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "recipient_refused"
    names = [(n, d.get("reason_class"), d.get("permanent")) for n, d in await events(stack, mb)]
    assert names == [
        ("SendFailed", "auth_failed", True), ("SendFailed", "recipient_refused", True),
    ]  # fmt: skip
    assert ews_server.sent == [] and "right" not in str(await events(stack, mb))


async def test_throttling_and_a_lost_answer_are_retried_and_sent_once(
    stack: Stack, ews_server: EwsServer
) -> None:
    password = ews_server.add_mailbox(SALES, SALES)
    mb = await mailbox(stack, ews_server, password=password)
    ews_server.busy = 1
    r = await send(stack, mb)
    assert r.status_code == 202, r.text
    assert r.json()["reason_class"] == "server_down" and "ErrorServerBusy" in r.json()["detail"]

    async def first_sent() -> bool:
        return len(ews_server.sent) == 1

    await wait_until(first_sent, timeout=10)
    ews_server.lose_answers = 1  # Exchange sent it; the answer never arrived
    r = await send(stack, mb, subject="Once only")
    assert r.status_code == 202, r.text
    send_id = r.json()["id"]

    async def done() -> bool:
        r = await stack.call("GET", f"/v1/mailboxes/{mb}/messages/{send_id}")
        return bool(r.json()["status"] == "sent")

    await wait_until(done, timeout=10)
    await asyncio.sleep(0.5)
    assert [message_from_bytes(s["raw"])["Subject"] for s in ews_server.sent] == [
        "Quarterly numbers", "Once only",
    ]  # fmt: skip
    assert "FindItem" in ews_server.ops() and not ews_server.violations


async def test_office365_shared_mailbox_sends_with_app_only_access(
    stack: Stack, ews_server: EwsServer
) -> None:
    ews_server.add_mailbox("team@corp.example")
    secret = ews_server.app_secret("tenant-1", "app-1", "team@corp.example")
    mb = await mailbox(
        stack,
        ews_server,
        address="team@corp.example",
        protocol="office365",
        outgoing={"url": ews_server.url},
        auth_mode="oauth2",
        ownership="shared",
        password=secret,
    )
    r = await send(stack, mb)
    assert r.status_code == 201, r.text
    assert ews_server.requests[-1].auth == "bearer:app:app-1"
    assert ews_server.requests[-1].mailbox == "team@corp.example"
    assert len(ews_server.sent) == 1 and not ews_server.violations
    client_secret = ews_server.apps[("tenant-1", "app-1")]
    assert client_secret not in str(await events(stack, mb)) and client_secret not in r.text
