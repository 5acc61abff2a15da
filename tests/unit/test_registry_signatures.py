"""Signature sanitising, plain-text derivation and placeholders, with hostile HTML."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.registry.signatures import (
    SignatureError,
    derive_text,
    prepare,
    render,
    sanitize_html,
)

HOSTILE = [
    ('<script>alert(1)</script><b>Hi</b>', "<b>Hi</b>"),
    ('<img src=x onerror="alert(1)">', "<img>"),
    ('<a href="javascript:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
    ('<form action="https://evil"><input name=p></form>ok', "ok"),
    ('<iframe src="https://evil"></iframe>ok', "ok"),
    ('<style>body{background:url(https://t.example/p.gif)}</style>ok', "ok"),
    ('<p style="background:url(https://t.example/p.gif)">ok</p>', "<p>ok</p>"),
    ('<img src="https://t.example/pixel.gif">', "<img>"),
    ('<svg onload=alert(1)><circle/></svg>ok', "ok"),
    ('<a href="https://acme.example" onclick="x()">Acme</a>',
     '<a href="https://acme.example" rel="noopener noreferrer">Acme</a>'),
    ("<!-- <script>x</script> -->ok", "ok"),
    ('<meta http-equiv="refresh" content="0;url=https://evil">ok', "ok"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "clean"), HOSTILE)
def test_hostile_html_is_cleaned(raw: str, clean: str) -> None:
    assert sanitize_html(raw) == clean


def test_embedded_images_survive_remote_ones_do_not() -> None:
    data = '<img src="data:image/png;base64,iVBORw0KGgo=" alt="logo">'
    assert 'src="data:image/png;base64,iVBORw0KGgo="' in sanitize_html(data)
    assert 'src="cid:logo@acme"' in sanitize_html('<img src="cid:logo@acme">')
    assert "src" not in sanitize_html('<img src="data:text/html;base64,PHNjcmlwdD4=">')


def test_plain_text_is_derived_with_lines_and_links() -> None:
    clean, text = prepare(
        "<p><b>{employee.name}</b><br>{employee.title}</p>"
        '<p><a href="mailto:{mailbox.address}">Write to us</a> · <a href="https://acme.example">'
        "Acme</a></p>"
    )
    assert text == (
        "{employee.name}\n{employee.title}\n\n"
        "Write to us <{mailbox.address}> · Acme <https://acme.example>"
    )
    assert "<b>{employee.name}</b>" in clean


def test_unknown_placeholder_is_refused_when_saved() -> None:
    with pytest.raises(SignatureError) as info:
        prepare("Regards, {employee.nmae}")
    assert info.value.code == "unknown_placeholder" and "{employee.nmae}" in str(info.value)


def test_render_escapes_values_in_html_only() -> None:
    values = {"employee.name": "Ada <script>", "mailbox.address": "a@x.io"}
    assert render("<b>{employee.name}</b>", values, html=True) == "<b>Ada &lt;script&gt;</b>"
    assert render("{employee.name} {mailbox.address}", values, html=False) == "Ada <script> a@x.io"


def test_too_large_is_refused() -> None:
    with pytest.raises(SignatureError, match="bytes"):
        sanitize_html("x" * 70_000)


@given(st.text(max_size=300))
def test_sanitiser_never_lets_active_content_through(raw: str) -> None:
    try:
        clean, text = prepare(raw)
    except SignatureError:
        return
    lowered = clean.lower()
    for bad in ("<script", "onerror=", "onload=", "javascript:", "<iframe", "<form", "<style"):
        assert bad not in lowered
    assert isinstance(derive_text(clean), str) and isinstance(text, str)
