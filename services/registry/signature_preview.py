"""Signature preview, pure: a draft sanitised and derived exactly as a save would
(``domain_signatures.prepare``), its placeholders filled as the sender fills them at send time
(``signatures.render``), and what the sanitiser removed.

The placeholder values follow the sender's contract (``services/sender/signatures.py``
``values_for``; ``tests/unit/test_signature_preview.py`` checks both agree): ``{mailbox.*}``
are the From address and name the mailbox sends with, ``{employee.*}`` the person sending.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser

from services.registry import domain_signatures, signatures
from services.registry.repository import AccountRow, EmployeeRow

COMMENT = "#comment"


@dataclass(frozen=True, slots=True)
class Removed:
    element: str
    """The element's tag (``#comment`` for comments)."""
    attribute: str | None
    """None: the element itself (with what it held); else one of its attributes."""
    count: int


@dataclass(frozen=True, slots=True)
class Preview:
    html: str
    text: str
    placeholders: list[str]
    filled_html: str
    filled_text: str
    removed: list[Removed] | None


def values_for(account: AccountRow, person: EmployeeRow | None) -> dict[str, str]:
    """The placeholder values a send from ``account`` by ``person`` gets."""
    s = account.settings
    found = {
        "mailbox.address": s.send_as_address or account.address,
        "mailbox.display_name": s.send_as_name if s.send_as_name is not None else s.display_name,
    }
    if person is not None:
        found |= {
            "employee.name": person.name,
            "employee.email": person.email,
            "employee.title": person.title or "",
            "employee.department": person.department or "",
        }
    return found


class _Census(HTMLParser):
    """Counts elements and (element, attribute) pairs; text is ignored."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.seen: Counter[tuple[str, str | None]] = Counter()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen[(tag, None)] += 1
        for name in {a for a, _ in attrs}:
            self.seen[(tag, name)] += 1

    def handle_comment(self, data: str) -> None:
        self.seen[(COMMENT, None)] += 1


def _census(html: str) -> Counter[tuple[str, str | None]]:
    parser = _Census()
    parser.feed(html)
    parser.close()
    return parser.seen


def removed(raw: str, clean: str) -> list[Removed] | None:
    """Elements, attributes and comments of ``raw`` missing from ``clean`` (what the sanitiser
    took out), elements first; None when ``raw`` is too malformed to take stock of."""
    try:
        before = _census(raw)
    except AssertionError:  # html.parser gives up on e.g. an unknown ``<![keyword[``
        return None
    gone = before - _census(clean)
    out = [Removed(tag, attr, n) for (tag, attr), n in gone.items()]
    return sorted(out, key=lambda r: (r.attribute is not None, r.element, r.attribute or ""))


def preview(raw: str, values: dict[str, str]) -> Preview:
    """What saving ``raw`` would store, and how a send fills it; raises ``Invalid`` (422) for
    what a save refuses (unknown placeholder, empty once sanitised, too large)."""
    stored = domain_signatures.prepare(raw)
    return Preview(
        html=stored.html,
        text=stored.text,
        placeholders=sorted(signatures.placeholders_in(stored.html)),
        filled_html=signatures.render(stored.html, values, html=True),
        filled_text=signatures.render(stored.text, values, html=False),
        removed=removed(raw, stored.html),
    )
