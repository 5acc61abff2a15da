"""The Sent copy in a real Dovecot, the NATS request handler, the audit trail, header-injection
attempts over HTTP, and Send grants from the real authz service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from libs.common.events import Server
from libs.common.natsserver import NatsServer
from services.sender.app import SEND_SUBJECT
from services.sender.permissions import AuthzPermissions
from tests.integration.test_sender_support import FAST, SenderWorld, world
from tests.support.dovecot import Dovecot
from tests.support.smtpd import SmtpServer
from tests.support.stack import start_stack, wait_until

pytestmark = pytest.mark.connected
__all__ = ["world"]


def _imap(dovecot: Dovecot, security: str) -> Server:
    port = dovecot.imaps_port if security == "ssl" else dovecot.imap_port
    return Server(protocol="imap", host="127.0.0.1", port=port, security=security)


@pytest.mark.parametrize("security", ["ssl", "starttls"])
async def test_sent_copy_is_appended_to_the_sent_folder(
    world: SenderWorld, dovecot: Dovecot, security: str
) -> None:
    user, password = dovecot.new_user("sent")
    world.smtpd.add_user(user, password)
    mb = await world.mailbox(
        protocol="imap", user=user, password=password, incoming=_imap(dovecot, security)
    )
    r = await world.send(mb, bcc=["dave@example.com"], subject="Filed")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["sent_copy"] == "pending"

    async def saved() -> Any:
        got = await world.stack.call("GET", f"/v1/mailboxes/{mb}/messages/{out['id']}")
        return got.json() if got.json()["sent_copy"] == "saved" else None

    await wait_until(saved, timeout=15)
    assert len(dovecot.uids(user, "Sent")) == 1
    text = dovecot.doveadm("fetch", "-u", user, "hdr", "mailbox", "Sent", "all")
    assert out["message_id"] in text and "Subject: Filed" in text
    assert "Bcc: dave@example.com" in text  # the sender's own record shows the Bcc
    delivered = (await world.smtpd.messages_async(1))[0]
    assert b"Bcc" not in delivered.data.split(b"\r\n\r\n")[0]

    # per request: no copy
    r = await world.send(mb, save_sent_copy=False)
    assert r.status_code == 201 and r.json()["sent_copy"] == "none"
    rec = await world.record(mb, r.json()["id"])
    assert rec.copy_state == "none"
    assert len(dovecot.uids(user, "Sent")) == 1


async def test_providers_that_file_sent_mail_get_no_copy(
    world: SenderWorld, dovecot: Dovecot
) -> None:
    user, password = dovecot.new_user("gm")
    world.smtpd.add_user(user, password)
    mb = await world.mailbox(
        protocol="gmail", user=user, password=password, incoming=_imap(dovecot, "ssl")
    )
    r = await world.send(mb, save_sent_copy=True)
    assert r.status_code == 201 and r.json()["sent_copy"] == "none"


async def test_internal_services_send_over_nats(world: SenderWorld) -> None:
    mb = await world.mailbox()
    nc: Any = world.stack.host.runtime.nc
    req = {
        "tenant_id": "acme",
        "mailbox_id": mb,
        "idempotency_key": "auto-reply-1",
        "service": "sync",
        "message": {"to": ["alice@example.com"], "subject": "Out of office", "text": "Away"},
    }
    first = json.loads((await nc.request(SEND_SUBJECT, json.dumps(req).encode(), 10)).data)
    assert first["ok"] is True and first["send"]["status"] == "sent", first
    again = json.loads((await nc.request(SEND_SUBJECT, json.dumps(req).encode(), 10)).data)
    assert again["ok"] is True and again["replayed"] is True
    assert again["send"]["id"] == first["send"]["id"]
    assert len(world.smtpd.messages) == 1
    bad = json.loads((await nc.request(SEND_SUBJECT, b'{"tenant_id": "acme"}', 10)).data)
    assert bad["ok"] is False and bad["error"]["code"] == "invalid_request"
    for corr in ("a\r\nce-actor: admin", "two words"):  # it would travel as a header
        crlf = {**req, "idempotency_key": "crlf", "correlation_id": corr}
        refused = json.loads((await nc.request(SEND_SUBJECT, json.dumps(crlf).encode(), 10)).data)
        assert refused["ok"] is False and refused["error"]["code"] == "invalid_request", refused
        assert "correlation_id" in refused["error"]["message"]
    other = {**req, "tenant_id": "evil", "idempotency_key": "x"}
    probe = json.loads((await nc.request(SEND_SUBJECT, json.dumps(other).encode(), 10)).data)
    assert probe["ok"] is False and probe["error"]["code"] == "not_found"
    [(name, _)] = await world.events(mb)
    assert name == "MessageSent"
    traced = {**req, "idempotency_key": "corr", "correlation_id": "ticket-42"}
    ok = json.loads((await nc.request(SEND_SUBJECT, json.dumps(traced).encode(), 10)).data)
    assert ok["ok"] is True, ok
    last = (await world.stack.host.service("sender").db.load("acme", mb))[-1]
    assert last.event_name == "MessageSent" and last.correlation_id == "ticket-42"


async def test_outcome_events_reach_the_audit_trail(world: SenderWorld) -> None:
    mb = await world.mailbox()
    sent = (await world.send(mb)).json()
    world.smtpd.reject_recipients()
    await world.send(mb)

    async def trail() -> list[Any] | None:
        r = await world.stack.call("GET", "/v1/audit/events", params={"aggregate_id": mb})
        items = [i["event"] for i in r.json()["items"] if "sender" in i["event"]["type"]]
        return items if len(items) >= 2 else None

    items = await wait_until(trail)
    assert items is not None
    assert [i["type"] for i in items] == [
        "mailroom.sender.MessageSent.v1",
        "mailroom.sender.SendFailed.v1",
    ]
    assert items[0]["data"]["send_id"] == sent["id"] and items[0]["actor"] == "admin:admin"
    assert items[1]["data"]["reason_class"] == "recipient_refused"


@pytest.mark.parametrize(
    "body",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nX-Injected: 1"},
        {"subject": "Hi\u2028There"},
        {"to": [{"address": "alice@example.com", "name": "A\r\nBcc: victim@example.com"}]},
        {"to": ["alice@example.com\r\nRCPT TO:<victim@example.com>"]},
        {"to": ["Alice <alice@example.com>"]},
        {"to": ["alice@example.com, victim@example.com"]},
        {"cc": ['"a"@example.com']},
        {"reply_to": ["x@example.com\n"]},
        {"in_reply_to": "<a@b>\r\nBcc: victim@example.com"},
        {"references": ["<a@b> <c@d>"]},
        {"attachments": [{"filename": "a\r\n.txt", "content_base64": ""}]},
        {"attachments": [{"filename": "invoice\u202efdp.exe", "content_base64": ""}]},
        {
            "attachments": [
                {"filename": "a.txt", "content_type": "text/plain\r\nX: y", "content_base64": ""}
            ]
        },
    ],
)
async def test_header_injection_is_refused(world: SenderWorld, body: dict[str, Any]) -> None:
    mb = await world.mailbox()
    r = await world.send(mb, **body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert world.smtpd.messages == []


async def test_send_grants_from_the_authz_service(
    tmp_path: Path,
    nats_server: NatsServer,
    smtpd: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k, v in {**FAST, "MAILROOM_SENDER_PERMISSIONS": "authz"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAILROOM_SENDER_CA_FILE", str(smtpd.ca_path))
    stack = await start_stack(tmp_path, nats_server, ("sender", "authz", "audit"))
    try:
        w = SenderWorld(stack, smtpd, grants=False)
        assert w.svc.wiring is not None
        assert isinstance(w.svc.wiring.permissions, AuthzPermissions)
        bob = await w.employee("Bob Delegate", "bob@corp.example")
        mb = await w.mailbox(address="team@corp.example", display_name="Team")
        denied = await w.send(mb, role="employee", subject_=bob)
        assert denied.status_code == 403
        grant = await stack.call(
            "POST",
            f"/v1/mailboxes/{mb}/grants",
            json={
                "grantee_kind": "employee",
                "grantee_id": bob,
                "level": "send",
                "on_behalf": True,
            },
        )
        assert grant.status_code == 201, grant.text
        revision = grant.json()["revision"]
        r = await w.send(
            mb, role="employee", subject_=bob, headers={"Mailroom-Authz-Revision": str(revision)}
        )
        assert r.status_code == 201, r.text
        msg = (await smtpd.messages_async(1))[0].message()
        assert "team@corp.example" in msg["From"] and "bob@corp.example" in msg["Sender"]
        other = await w.send(mb, tenant="evil")
        assert other.status_code == 404
    finally:
        await stack.client.aclose()
        await stack.host.stop()
