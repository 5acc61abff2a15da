"""Header encoding we control end to end: Subject and the address headers.

The standard library's folding re-parses values (a literal ``=?utf-8?q?..?=`` in a subject is
decoded, leading blanks are dropped), so the headers that carry caller text are encoded here:

* a subject or display name that is plain printable ASCII is kept as is (quoted when needed);
* anything else becomes RFC 2047 ``B`` encoded words of at most 75 characters;
* lines are folded with CRLF + space only between words or mailboxes, so no caller text can
  ever start a new header line (callers' text never holds CR/LF anyway: ``models`` refuses it).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any

_ATOM_PHRASE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+( [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*\Z")
_WORD_BYTES = 42  # 56 base64 characters + 12 of "=?utf-8?b??=" = 68, fits any first line
SOFT = 78
HARD = 998


class Prefolded(str):
    """A header value already folded for the wire. ``email.policy`` stores objects with a
    ``name`` as they are and asks them to ``fold`` themselves when the message is written."""

    name: str
    folded: str

    def __new__(cls, name: str, value: str, folded: str) -> Prefolded:
        obj = super().__new__(cls, value)
        obj.name = name
        obj.folded = folded
        return obj

    def fold(self, *, policy: Any) -> str:
        return self.folded


def encoded_words(text: str) -> list[str]:
    """``text`` as base64 encoded words, each holding whole characters (RFC 2047 §5)."""
    chunks: list[bytes] = []
    chunk = b""
    for ch in text:
        b = ch.encode("utf-8")
        if chunk and len(chunk) + len(b) > _WORD_BYTES:
            chunks.append(chunk)
            chunk = b""
        chunk += b
    chunks.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(c).decode()}?=" for c in chunks]


def _fold(name: str, tokens: Sequence[str]) -> str:
    """Join tokens with single spaces; a fold replaces such a space by CRLF + space, so
    unfolding (RFC 5322 §2.2.3: removing the CRLF) gives back exactly the joined text."""
    head = f"{name}:"
    lines: list[str] = []
    line = head
    for tok in tokens:
        if line != head and len(line) + 1 + len(tok) > SOFT:
            lines.append(line)
            line = f" {tok}"
        else:
            line = f"{line} {tok}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _plain_fits(name: str, text: str) -> bool:
    return (
        bool(_PRINTABLE.match(text))
        and "=?" not in text
        and text == text.strip(" ")
        and len(name) + 2 + len(text) <= HARD
    )


def subject(text: str, name: str = "Subject") -> Prefolded:
    if text == "":
        return Prefolded(name, text, f"{name}: \r\n")
    if _plain_fits(name, text) and "  " not in text:
        # Break only before a single space: unfolding (removing CRLF) restores the text.
        return Prefolded(name, text, _fold(name, text.split(" ")))
    if _plain_fits(name, text) and len(name) + 2 + len(text) <= SOFT:
        return Prefolded(name, text, f"{name}: {text}\r\n")
    return Prefolded(name, text, _fold(name, encoded_words(text)))


def _phrase(display: str) -> list[str]:
    """A display name as phrase tokens (one token unless it needs several encoded words)."""
    if _ATOM_PHRASE.match(display) and "=?" not in display:
        return [display]
    if _PRINTABLE.match(display) and "=?" not in display:
        quoted = display.replace("\\", "\\\\").replace('"', '\\"')
        return [f'"{quoted}"']
    return encoded_words(display)


def mailbox_tokens(display: str, address: str) -> list[str]:
    if not display:
        return [address]
    return [*_phrase(display), f"<{address}>"]


def addresses(name: str, mailboxes: Sequence[tuple[str, str]]) -> Prefolded:
    """An address-list header from ``(display name, addr-spec)`` pairs."""
    tokens: list[str] = []
    for i, (display, address) in enumerate(mailboxes):
        parts = mailbox_tokens(display, address)
        if i < len(mailboxes) - 1:
            parts[-1] += ","
        tokens.extend(parts)
    value = ", ".join(f"{d} <{a}>" if d else a for d, a in mailboxes)
    return Prefolded(name, value, _fold(name, tokens))
