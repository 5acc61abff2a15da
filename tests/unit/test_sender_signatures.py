"""Signatures at send time, pure: choice, placeholders (escaped in HTML), both parts."""

from __future__ import annotations

import pytest

from libs.common.events.registry import AccountSettings
from services.sender import domain
from services.sender.models import Signature
from services.sender.ports import Invalid
from services.sender.signatures import compose, mailbox_choice, values_for

MAILBOX = domain.Mailbox(
    "t", "m1", "sales@x.io", "imap", "e1", "active", AccountSettings(display_name="Sales")
)
PERSON = {"name": "Ada <Lovelace>", "title": "CTO", "email": "ada@x.io", "department": ""}
PERSONAL = ("<i>{employee.name}</i>", "{employee.name}")
OWN = ("<b>Sales</b> {mailbox.address}", "Sales {mailbox.address}")


def test_personal_above_mailbox_in_both_parts_values_escaped_in_html() -> None:
    text, html = compose("Hello", "<p>Hello</p>", [PERSONAL, OWN], values_for(MAILBOX, PERSON))
    assert text == "Hello\n\n-- \nAda <Lovelace>\n\nSales sales@x.io"
    assert html == (
        '<p>Hello</p><div class="mailroom-signature"><div><i>Ada &lt;Lovelace&gt;</i></div>'
        "<div><b>Sales</b> sales@x.io</div></div>"
    )


def test_html_signature_goes_before_the_body_end_and_no_part_is_made_up() -> None:
    text, html = compose(None, "<html><body>Hi</body></html>", [OWN], values_for(MAILBOX, None))
    assert text is None
    assert html is not None and html.endswith("sales@x.io</div></div></body></html>")
    text, html = compose("Hi", None, [OWN], values_for(MAILBOX, None))
    assert html is None and text == "Hi\n\n-- \nSales sales@x.io"
    assert compose("Hi", "<p>Hi</p>", [], {}) == ("Hi", "<p>Hi</p>")


def test_unfilled_placeholders_become_empty() -> None:
    text, _ = compose("x", None, [("", "{employee.title}|")], values_for(MAILBOX, None))
    assert text == "x\n\n-- \n|"


def test_choice() -> None:
    assert mailbox_choice(Signature()) == "default"
    assert mailbox_choice(Signature(mode="none")) is None
    assert mailbox_choice(Signature(mode="named", name="sales")) == "sales"
    with pytest.raises(Invalid):
        mailbox_choice(Signature(mode="named"))
