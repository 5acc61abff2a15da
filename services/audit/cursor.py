"""Paging through a tenant's trail in either order with one opaque cursor.

A cursor names a position in the trail and the side of it to read next: ``after`` (newer
entries) or ``before`` (older ones). It is URL-safe base64, so clients treat it as opaque; a
plain number (the cursor of earlier versions) still means "after that position". Anything else
is refused 422 ``invalid_cursor``.

A page is read from the database nearest-first, one entry more than asked, so the API knows
exactly whether there is more beyond it: ``next_cursor`` continues in the requested order
(None: nothing more), ``prev_cursor`` goes back the other way (None on the first page, and on a
page read back to the start). Filters are not in the cursor: send the same ones with it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from libs.common.errors import MailroomError
from services.audit import domain

Side = Literal["after", "before"]
Order = Literal["asc", "desc"]
MAX_POSITION = 2**63 - 1
_TOKEN = re.compile(r"^([ab])(0|[1-9][0-9]{0,18})$")
_PLAIN = re.compile(r"^[0-9]{1,19}$")


@dataclass(frozen=True, slots=True)
class Cursor:
    side: Side
    position: int


def encode(side: Side, position: int) -> str:
    raw = f"{side[0]}{position}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _invalid() -> MailroomError:
    return MailroomError("cursor must come from next_cursor or prev_cursor", code="invalid_cursor")


def decode(value: str | None) -> Cursor | None:
    """The cursor a client sent back (None: start at the beginning of the order)."""
    if not value:
        return None
    if _PLAIN.match(value):  # a cursor from before cursors were opaque
        position = int(value)
        side: Side = "after"
    else:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise _invalid() from None
        m = _TOKEN.match(raw)
        if m is None or encode("after" if m[1] == "a" else "before", int(m[2])) != value:
            raise _invalid()
        position = int(m[2])
        side = "after" if m[1] == "a" else "before"
    if position > MAX_POSITION:
        raise _invalid()
    return Cursor(side, position)


#: Reads up to ``limit`` entries after or before a position (None: from the end named by
#: ``newest_first``), nearest first.
Fetch = Callable[[int, int | None, int | None, bool], Awaitable[list[domain.StoredEntry]]]


@dataclass(frozen=True, slots=True)
class Page:
    items: list[domain.StoredEntry]
    next_cursor: str | None
    prev_cursor: str | None


async def read_page(fetch: Fetch, order: Order, cursor: Cursor | None, limit: int) -> Page:
    """One page in ``order`` from ``cursor``, with the cursors of the pages on either side."""
    forward: Side = "after" if order == "asc" else "before"
    backward: Side = "before" if forward == "after" else "after"

    def bounds(side: Side, position: int | None) -> tuple[int | None, int | None]:
        return (position, None) if side == "after" else (None, position)

    if cursor is None or cursor.side == forward:
        after, before = bounds(forward, cursor.position if cursor else None)
        rows = await fetch(limit + 1, after, before, order == "desc")
        items = rows[:limit]
        more = len(rows) > limit
        nxt = encode(forward, items[-1].position) if more else None
        # reached with a cursor: the entries it came from lie the other way
        prev = encode(backward, items[0].position) if cursor is not None and items else None
        return Page(items, nxt, prev)
    after, before = bounds(backward, cursor.position)
    rows = await fetch(limit + 1, after, before, order == "asc")
    items = list(reversed(rows[:limit]))
    prev = encode(backward, items[0].position) if len(rows) > limit else None
    nxt = encode(forward, items[-1].position) if items else None
    return Page(items, nxt, prev)
