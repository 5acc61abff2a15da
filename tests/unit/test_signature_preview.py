"""Signature preview, pure: what the sanitiser removed, and placeholders filled exactly as the
sender fills them at send time (the two services share the contract, not code)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.common.events.registry import AccountSettings
from services.registry import signature_preview as sp
from services.registry.repository import AccountRow, EmployeeRow
from services.registry.validation import Invalid
from services.sender import domain
from services.sender.signatures import compose
from services.sender.signatures import values_for as sender_values

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ALL = (
    "<p>{employee.name} · {employee.title} · {employee.email} · {employee.department}</p>"
    "<p>{mailbox.display_name} &lt;{mailbox.address}&gt;</p>"
)


def account(settings: AccountSettings, owner: str | None = "e1") -> AccountRow:
    return AccountRow(
        "m1", "sales@x.io", settings.display_name, "imap", "active", "personal", owner, None,
        settings, True, 1, 1, None, None, NOW, NOW, None, 3,
    )  # fmt: skip


def person(title: str = "CTO & co", department: str | None = None) -> EmployeeRow:
    return EmployeeRow("e1", "Ada <Lovelace>", "ada@x.io", title, department, "active", NOW, NOW, 1)


@pytest.mark.parametrize(
    "settings",
    [
        AccountSettings(display_name="Sales"),
        AccountSettings(display_name="Sales", send_as_name="Acme", send_as_address="a@x.io"),
        AccountSettings(display_name="Sales", send_as_name=""),
    ],
)
@pytest.mark.parametrize("who", [person(), person("", "R&D"), None])
def test_filled_as_the_sender_fills_them(
    settings: AccountSettings, who: EmployeeRow | None
) -> None:
    row = account(settings)
    values = sp.values_for(row, who)
    mailbox = domain.Mailbox("t", "m1", row.address, "imap", "e1", "active", settings)
    details = None
    if who is not None:
        details = {
            "name": who.name,
            "email": who.email,
            "title": who.title or "",
            "department": who.department or "",
        }
    assert values == sender_values(mailbox, details)
    p = sp.preview(ALL, values)
    text, html = compose("", "", [(p.html, p.text)], sender_values(mailbox, details))
    assert html == f'<div class="mailroom-signature"><div>{p.filled_html}</div></div>'
    assert text == f"-- \n{p.filled_text}"


def test_removed_lists_elements_attributes_and_comments() -> None:
    raw = (
        '<p onclick="x()" style="color:red">Hi <b>{employee.name}</b></p><!-- note -->'
        '<script>alert(1)</script><script>2</script><img src="https://t.example/p.gif" alt="">'
        '<form><input name="pw"></form><a href="javascript:alert(1)">a</a>'
        '<a href="https://acme.example" rel="me">b</a>'
    )
    p = sp.preview(raw, {"employee.name": "Ada"})
    assert p.html.startswith("<p>Hi <b>{employee.name}</b></p><img")
    assert p.filled_html.startswith("<p>Hi <b>Ada</b></p>")
    assert [(r.element, r.attribute, r.count) for r in p.removed or []] == [
        ("#comment", None, 1),
        ("form", None, 1),
        ("input", None, 1),
        ("script", None, 2),
        ("a", "href", 1),
        ("img", "src", 1),
        ("input", "name", 1),
        ("p", "onclick", 1),
        ("p", "style", 1),
    ]
    assert sp.removed("<b>x</b>", "<b>x</b>") == []
    assert sp.removed("<![odd[ x ]]>", "") is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("<script>x</script>", "empty_signature"),
        ("{employee.nmae}", "unknown_placeholder"),
        ("x" * (64 * 1024 + 1), "signature_too_large"),
    ],
)
def test_refused_as_a_save_is(raw: str, code: str) -> None:
    with pytest.raises(Invalid) as exc:
        sp.preview(raw, {})
    assert exc.value.code == code
