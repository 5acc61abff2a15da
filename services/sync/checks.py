"""What one poll of one folder found: new messages (metadata), vanished UIDs, a UIDVALIDITY
reset, the folder's new state. No database writes here: the watcher records a poll's results
in one transaction.

IMAP, per folder: EXAMINE gives UIDVALIDITY, UIDNEXT and EXISTS. Same UIDVALIDITY and UIDNEXT
as last time: nothing new. Otherwise ``UID SEARCH UID <last+1>:*`` names the new UIDs, fetched
(header fields only) in UID order, at most ``fetch_batch`` per poll — the rest at once in the
next poll, so a catch-up after any downtime has no gap and each transaction stays small. If
EXISTS is lower than the known count plus the new ones, a ``UID SEARCH ALL`` names what
vanished. A folder seen for the first time (or after a UIDVALIDITY reset) is baselined: its
UIDs become known, and only messages that arrived since the account was added (or since the
last sync before the reset) are announced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.sync import domain
from services.sync.imap import ImapSession
from services.sync.mailmeta import MessageMeta
from services.sync.models import FolderState
from services.sync.pop3 import Listing

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass
class FolderResult:
    state: FolderState
    new: list[MessageMeta] = field(default_factory=list)
    """Messages to record and announce (``MessageReceived``), deduplicated when recorded."""
    baseline: list[tuple[int, str | None]] = field(default_factory=list)
    """(uid, uidl) to record as known without announcing them."""
    vanished: list[int] = field(default_factory=list)
    forget: list[int] = field(default_factory=list)
    """UIDs the hub deleted itself (POP3 with leave_on_server false): forgotten quietly."""
    reset_from: int | None = None
    changed: bool = True
    more: bool = False
    hub_deletes: bool = False
    """New rows are marked as deleted by the hub (POP3 deletes them after the commit)."""
    seconds: float | None = None


def imap_date(when: datetime) -> str:
    d = when.astimezone(UTC)
    return f"{d.day}-{MONTHS[d.month - 1]}-{d.year}"


async def check_imap_folder(
    s: ImapSession,
    folder: str,
    prev: FolderState | None,
    *,
    added_at: datetime,
    announce_existing: bool,
    fetch_batch: int,
    known_uids: Callable[[int], Awaitable[set[int]]],
) -> FolderResult:
    now = datetime.now(UTC)
    chk = await s.examine(folder)
    if prev is None or prev.uidvalidity != chk.uidvalidity:
        all_uids = await s.search("ALL") if chk.exists else []
        since = added_at if prev is None else prev.last_synced_at
        announce: list[MessageMeta] = []
        if all_uids and (prev is not None or announce_existing):
            candidates = await s.search("SINCE", imap_date(since))
            metas = await s.fetch_meta(candidates[-fetch_batch:])
            announce = [m for m in metas if m.internaldate is not None and m.internaldate >= since]
        announced = {m.uid for m in announce}
        state = FolderState(
            folder,
            chk.uidvalidity,
            chk.uidnext,
            max(all_uids, default=max(0, (chk.uidnext or 1) - 1)),
            chk.exists,
            len(all_uids),
            now,
        )
        return FolderResult(
            state,
            new=announce,
            baseline=[(u, None) for u in all_uids if u not in announced],
            reset_from=prev.uidvalidity if prev is not None else None,
        )
    new_uids: list[int] = []
    if chk.uidnext is None or prev.uidnext is None or chk.uidnext != prev.uidnext:
        found = await s.search("UID", f"{prev.last_uid + 1}:*")
        new_uids = [u for u in found if u > prev.last_uid]
    batch = new_uids[:fetch_batch]
    metas = await s.fetch_meta(batch) if batch else []
    more = len(new_uids) > len(batch)
    vanished: list[int] = []
    known = prev.known + len(metas)
    if chk.exists < prev.known + len(new_uids):
        on_server = set(await s.search("ALL"))
        known_set = await known_uids(chk.uidvalidity)
        vanished = domain.vanished(known_set, on_server)
        known = len(known_set) - len(vanished) + len(metas)
    changed = bool(batch or vanished) or (chk.exists, chk.uidnext) != (prev.exists, prev.uidnext)
    state = FolderState(
        folder,
        chk.uidvalidity,
        None if more else chk.uidnext,
        batch[-1] if batch else prev.last_uid,
        chk.exists,
        known,
        now if changed else prev.last_synced_at,
    )
    return FolderResult(state, new=metas, vanished=vanished, changed=changed, more=more)


def check_pop3(
    listing: Listing,
    known: dict[str, tuple[int, bool]],
    prev: FolderState | None,
    metas: list[MessageMeta],
    *,
    leave_on_server: bool,
) -> FolderResult:
    """The POP3 maildrop as one folder ``INBOX`` with UIDVALIDITY 0 (UIDs assigned by sync)."""
    now = datetime.now(UTC)
    present = set(listing.uidls)
    vanished = [uid for uidl, (uid, gone) in known.items() if uidl not in present and not gone]
    forget = [uid for uidl, (uid, gone) in known.items() if uidl not in present and gone]
    new_uidls = [u for u in listing.uidls if u not in known]
    baseline: list[tuple[int, str | None]] = [] if metas else [(0, u) for u in new_uidls]
    state = FolderState(
        "INBOX",
        0,
        None,
        prev.last_uid if prev else 0,
        len(present),
        len(present),
        now,
    )
    changed = (
        bool(metas or baseline or vanished or forget)
        or prev is None
        or (prev.exists != len(present))
    )
    return FolderResult(
        state,
        new=metas,
        baseline=baseline,
        vanished=vanished,
        forget=forget,
        changed=changed,
        hub_deletes=not leave_on_server,
    )
