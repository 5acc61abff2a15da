"""Signatures applied by the sender, end to end: set through the registry's API, learnt by the
sender from the events, added to the HTML and text parts of what aiosmtpd receives."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from tests.support.sending import Mail, mail

__all__ = ["mail"]  # the fixture
pytestmark = [pytest.mark.e2e, pytest.mark.connected]

DEFAULT = (
    '<p><b>{employee.name}</b> · {employee.title}</p><p>Acme <a href="mailto:{mailbox.address}">'
    "write to us</a></p>"
)


def parts(msg: EmailMessage) -> tuple[str, str]:
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    text, markup = (str(p.get_content()).replace("\r\n", "\n").rstrip("\n") for p in (plain, html))
    return text, markup


async def _put(mail: Mail, url: str, html: str) -> None:
    r = await mail.stack.call("PUT", url, json={"html": html})
    assert r.status_code == 200, r.text


async def test_default_alternate_none_and_personal_signatures_reach_the_recipient(
    mail: Mail,
) -> None:
    ada = await mail.employee("ada", "CTO")
    mailbox = await mail.mailbox("ada@x.io", owner_id=ada)
    await _put(mail, f"/v1/accounts/{mailbox}/signatures/default", DEFAULT)
    await _put(mail, f"/v1/accounts/{mailbox}/signatures/short", "<i>Acme</i>")
    await _put(mail, f"/v1/employees/{ada}/signature", "<i>Cheers, {employee.name}</i>")
    await mail.in_sender(lambda repo: repo.signature(mailbox, "short"))
    await mail.in_sender(lambda repo: repo.personal_signature(ada))

    body = {"text": "Hi Alice", "html": "<p>Hi Alice</p>"}
    r = await mail.send(mailbox, **body)  # the default: the owner's personal one above it
    assert r.status_code == 201, r.text
    text, html = parts((await mail.delivered(1))[0])
    assert text == ("Hi Alice\n\n-- \nCheers, ada\n\nada · CTO\n\nAcme write to us <ada@x.io>")
    assert html == (
        '<p>Hi Alice</p><div class="mailroom-signature"><div><i>Cheers, ada</i></div>'
        '<div><p><b>ada</b> · CTO</p><p>Acme <a href="mailto:ada@x.io" '
        'rel="noopener noreferrer">write to us</a></p></div></div>'
    )

    r = await mail.send(mailbox, signature={"mode": "named", "name": "short"}, **body)
    assert r.status_code == 201, r.text
    text, html = parts((await mail.delivered(2))[1])
    assert text == "Hi Alice\n\n-- \nCheers, ada\n\nAcme"
    assert html.endswith("<div><i>Cheers, ada</i></div><div><i>Acme</i></div></div>")

    r = await mail.send(mailbox, signature={"mode": "none"}, **body)
    assert r.status_code == 201, r.text
    text, html = parts((await mail.delivered(3))[2])
    assert (text, html) == ("Hi Alice", "<p>Hi Alice</p>")

    r = await mail.send(mailbox, signature={"mode": "named", "name": "nope"}, **body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_signature"
    r = await mail.send(mailbox, signature={"mode": "named"}, **body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_signature_choice"
    assert len(mail.smtpd.messages) == 3


async def test_the_person_sending_on_behalf_signs_above_the_shared_mailbox(mail: Mail) -> None:
    bob = await mail.employee("bob", 'Builder <"&">')
    team = await mail.mailbox("team@x.io", ownership="shared", display_name="Team")
    await mail.grant(team, bob, "send", on_behalf=True)
    await _put(mail, f"/v1/accounts/{team}/signatures/default", "<b>Team</b> {mailbox.address}")
    await _put(mail, f"/v1/employees/{bob}/signature", "{employee.name}, {employee.title}")
    await mail.in_sender(lambda repo: repo.signature(team, "default"))
    await mail.in_sender(lambda repo: repo.personal_signature(bob))

    r = await mail.send(team, who=bob, role="employee", text="Hello", html="<p>Hello</p>")
    assert r.status_code == 201, r.text
    msg = (await mail.delivered(1))[0]
    assert "team@x.io" in msg["From"] and "bob@x.io" in msg["Sender"]
    text, html = parts(msg)
    assert text == 'Hello\n\n-- \nbob, Builder <"&">\n\nTeam team@x.io'
    assert (
        "<div>bob, Builder &lt;&quot;&amp;&quot;&gt;</div><div><b>Team</b> team@x.io</div>" in html
    )  # the title is HTML-escaped in the HTML part only
