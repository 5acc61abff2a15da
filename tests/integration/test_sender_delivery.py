"""The sender against a real aiosmtpd: TLS modes, AUTH, identity headers, BCC, idempotency."""

from __future__ import annotations

import asyncio
import email.header
import email.utils

import pytest

from tests.integration.test_sender_support import SenderWorld, world
from tests.support.smtpd import DEFAULT_USER

pytestmark = pytest.mark.connected
__all__ = ["world"]


def decoded(value: str) -> str:
    """An RFC 2047-compliant decoding of a raw header value."""
    return str(email.header.make_header(email.header.decode_header(value)))


def raw_mailbox(data: bytes, name: str) -> tuple[str, str]:
    """The single mailbox of a header, read from the wire bytes (unfolded), name decoded."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii").replace("\r\n ", " ")
    line = next(x for x in head.split("\r\n") if x.startswith(f"{name}: "))
    [(display, addr)] = email.utils.getaddresses([line.split(": ", 1)[1]])
    return decoded(display), addr


async def test_send_over_starttls_with_auth(world: SenderWorld) -> None:
    mb = await world.mailbox(
        security="starttls",
        send_as_name="Sales Team",
        send_as_address="sales@corp.example",
        auto_bcc=["archive@corp.example"],
    )
    r = await world.send(
        mb,
        to=[{"address": "alice@example.com", "name": "Alice"}],
        cc=["carol@example.com"],
        bcc=["dave@example.com"],
        subject="Quarterly numbers",
        text="See attached.",
        html="<p>See attached.</p>",
        attachments=[
            {"filename": "q3.csv", "content_type": "text/csv", "content_base64": "YSxiCjEsMgo="}
        ],
        reply_to=["replies@corp.example"],
        in_reply_to="<orig@example.com>",
        references=["<root@example.com>", "<orig@example.com>"],
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["status"] == "sent" and out["attempts"] == 1
    scrape = (await world.stack.client.get("/metrics")).text
    assert 'mailroom_sends_total{outcome="sent"}' in scrape
    [got] = await world.smtpd.messages_async(1)
    assert got.listener == "starttls" and got.auth_user == DEFAULT_USER
    assert got.mail_from == "sales@corp.example"
    assert sorted(got.rcpt_tos) == sorted(
        ["alice@example.com", "carol@example.com", "dave@example.com", "archive@corp.example"]
    )
    msg = got.message()
    assert email.utils.parseaddr(msg["From"]) == ("Sales Team", "sales@corp.example")
    assert msg["Sender"] is None  # an admin sends as the mailbox, not on its behalf
    assert msg["Bcc"] is None and b"dave@example.com" not in got.data
    assert b"archive@corp.example" not in got.data
    assert msg["Message-ID"] == out["message_id"]
    assert out["message_id"].endswith("@corp.example>")
    assert msg["Date"] and msg["Subject"] == "Quarterly numbers"
    assert msg["In-Reply-To"] == "<orig@example.com>"
    assert msg["References"] == "<root@example.com> <orig@example.com>"
    assert msg["Reply-To"] == "replies@corp.example"
    assert msg.get_content_type() == "multipart/mixed"
    body, att = list(msg.iter_parts())
    assert body.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in body.iter_parts()] == ["text/plain", "text/html"]
    assert att.get_filename() == "q3.csv" and att.get_payload(decode=True) == b"a,b\n1,2\n"
    events = await world.events(mb)
    assert [n for n, _ in events] == ["MessageSent"]
    data = events[0][1]
    assert data["recipients"] == 4 and data["send_id"] == out["id"]
    assert data["message_id"] == out["message_id"] and data["attempts"] == 1


async def test_send_over_implicit_tls(world: SenderWorld) -> None:
    mb = await world.mailbox(security="ssl", display_name="Support Desk")
    r = await world.send(mb)
    assert r.status_code == 201, r.text
    [got] = await world.smtpd.messages_async(1)
    assert got.listener == "tls" and got.auth_user == DEFAULT_USER
    # no send-as: the account's display name and address
    assert email.utils.parseaddr(got.message()["From"]) == ("Support Desk", "sales@corp.example")


async def test_from_falls_back_to_the_owner_and_sender_names_the_delegate(
    world: SenderWorld,
) -> None:
    owner = await world.employee("Olga Owner", "olga@corp.example")
    bob = await world.employee("Bob Delegate", "bob@corp.example")
    mb = await world.mailbox(address="olga@corp.example", owner_id=owner)
    world.grants.allowed[(bob, mb)] = True  # Send on behalf
    r = await world.send(
        mb, role="employee", subject_=bob, headers={"Mailroom-Authz-Revision": "7"}
    )
    assert r.status_code == 201, r.text
    assert world.grants.revisions[-1] == 7
    msg = (await world.smtpd.messages_async(1))[0].message()
    assert email.utils.parseaddr(msg["From"]) == ("Olga Owner", "olga@corp.example")
    assert email.utils.parseaddr(msg["Sender"]) == ("Bob Delegate", "bob@corp.example")
    [(name, data)] = await world.events(mb)
    assert name == "MessageSent" and data["on_behalf_of"] == bob


async def test_non_ascii_identity_is_encoded(world: SenderWorld) -> None:
    mb = await world.mailbox(send_as_name='Zoë Ünïcødé, "the" <boss>')
    r = await world.send(
        mb, to=[{"address": "x@example.com", "name": "Ærøskøbing"}], subject="Grüße 🎉"
    )
    assert r.status_code == 201, r.text
    got = (await world.smtpd.messages_async(1))[0]
    assert got.data.isascii()
    assert raw_mailbox(got.data, "From") == ('Zoë Ünïcødé, "the" <boss>', "sales@corp.example")
    assert raw_mailbox(got.data, "To") == ("Ærøskøbing", "x@example.com")
    assert got.message()["Subject"] == "Grüße 🎉"


async def test_idempotent_retry_delivers_once(world: SenderWorld) -> None:
    mb = await world.mailbox()
    first = await world.send(mb, "order-42")
    again = await world.send(mb, "order-42")
    racing = await asyncio.gather(*(world.send(mb, "order-43") for _ in range(5)))
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert {r.status_code for r in racing} <= {201, 202}
    assert len({r.json()["id"] for r in racing}) == 1
    await asyncio.sleep(0.5)
    assert len(world.smtpd.messages) == 2  # order-42 once, order-43 once
    other_body = await world.send(mb, "order-42", subject="Something else")
    assert other_body.status_code == 422
    assert other_body.json()["error"]["code"] == "idempotency_key_reused"
    missing = await world.stack.call(
        "POST", f"/v1/mailboxes/{mb}/messages", json={"to": ["a@example.com"]}
    )
    assert missing.status_code == 422
    assert missing.json()["error"]["code"] == "idempotency_key_required"
    assert [n for n, _ in await world.events(mb)] == ["MessageSent", "MessageSent"]
