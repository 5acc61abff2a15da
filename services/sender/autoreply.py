"""The autoresponder's decisions, pure (RFC 3834): whether a new message gets an automatic
reply, to whom, with which subject and threading headers. Nothing here does I/O.

A message is answered only when the autoreply is active (its window), the message was seen
after the autoreply was set, it arrived in INBOX, and nothing marks it as automatic or as list
traffic (RFC 3834 §2):

* ``Auto-Submitted`` with any value but ``no``;
* ``Precedence: bulk | list | junk``; a ``List-Id`` or ``List-Unsubscribe`` header;
* ``X-Auto-Response-Suppress`` naming ``All``, ``OOF`` or ``AutoReply`` (Microsoft);
* a null Return-Path (``<>``: a bounce), or an address that robots use (``no-reply``,
  ``mailer-daemon``, ``postmaster``, ``owner-*``, ``*-request``, ...), or the mailbox itself;
* and once per correspondent per ``interval_days`` (RFC 3834 §2 recommends 7 days).

The reply goes to the Return-Path when the message has one, else to From (§4); it carries
``Auto-Submitted: auto-replied`` (§5), In-Reply-To / References to the original (§3.1.6) and
the subject ``Auto: <original subject>`` unless one is configured (§3.1.5).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import getaddresses
from typing import Literal

from services.sender import domain

DEFAULT_INTERVAL_DAYS = 7
"""RFC 3834 §2: "A 7-day period is RECOMMENDED as a default"."""
MAX_INTERVAL_DAYS = 365
REPLY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Auto-Submitted", "auto-replied"),
    ("X-Auto-Response-Suppress", "All"),  # asks Exchange not to answer the answer
)
BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
SUPPRESSING = frozenset({"all", "oof", "autoreply"})
_ROBOT_LOCALS = frozenset(
    {
        "mailer-daemon", "postmaster", "noreply", "no-reply", "no_reply", "donotreply",
        "do-not-reply", "do_not_reply", "listserv", "majordomo", "mailman", "bounce", "bounces",
        "nobody",
    }
)  # fmt: skip
_ROBOT_PREFIXES = ("owner-", "bounce-", "bounces-", "bounce+", "bounces+", "noreply-", "no-reply-")
_ROBOT_SUFFIXES = ("-request", "-owner", "-bounces", "-noreply", "-no-reply")
_MSG_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,250}@[\x21-\x3b\x3d\x3f-\x7e]{1,250}>\Z")
_SUBJECT_MAX = 900

Skip = Literal[
    "inactive",
    "before_autoreply",
    "not_inbox",
    "auto_submitted",
    "bulk",
    "mailing_list",
    "suppressed",
    "null_sender",
    "no_sender",
    "robot_sender",
    "own_address",
    "recently_replied",
]


@dataclass(frozen=True, slots=True)
class Rule:
    """A mailbox's autoreply settings."""

    text: str
    html: str | None = None
    subject: str | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    interval_days: int = DEFAULT_INTERVAL_DAYS
    set_at: datetime | None = None
    """When it was set: mail seen before then is not answered (late or replayed events)."""

    def active(self, now: datetime) -> bool:
        if self.starts_at is not None and now < self.starts_at:
            return False
        return self.ends_at is None or now < self.ends_at


@dataclass(frozen=True, slots=True)
class Incoming:
    """What sync reported about a new message (``MessageReceived``), metadata only."""

    folder: str
    seen_at: datetime
    message_id: str | None = None
    from_: str | None = None
    subject: str | None = None
    return_path: str | None = None
    auto_submitted: str | None = None
    precedence: str | None = None
    mailing_list: bool = False
    auto_response_suppress: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    to: str
    """The one recipient (RFC 3834 §3.1.3), lower case: also the key for "once per N days"."""
    subject: str
    in_reply_to: str | None
    references: list[str]


@dataclass(frozen=True, slots=True)
class Verdict:
    reply: Reply | None
    skipped: Skip | None = None


def _address(value: str | None) -> str | None:
    """The one plain address in a header value, normalised, or None."""
    if not value:
        return None
    found = [addr for _, addr in getaddresses([value]) if addr]
    if len(found) != 1:
        return None
    try:
        return domain.check_address(found[0]).lower()
    except ValueError:
        return None


def is_robot(address: str) -> bool:
    """Addresses that programs send from, which must not get automatic replies."""
    local = address.rpartition("@")[0].lower()
    base = local.split("+", 1)[0]
    return (
        base in _ROBOT_LOCALS or local.startswith(_ROBOT_PREFIXES) or base.endswith(_ROBOT_SUFFIXES)
    )


def automatic(msg: Incoming) -> Skip | None:
    """Why the message itself must not be answered (automatic or list traffic), if so."""
    if msg.auto_submitted is not None:
        keyword = msg.auto_submitted.split(";", 1)[0].strip().lower()
        if keyword and keyword != "no":
            return "auto_submitted"
    if msg.precedence is not None and msg.precedence.strip().lower() in BULK_PRECEDENCE:
        return "bulk"
    if msg.mailing_list:
        return "mailing_list"
    if msg.auto_response_suppress is not None:
        words = set(re.split(r"[\s,;]+", msg.auto_response_suppress.lower()))
        if words & SUPPRESSING:
            return "suppressed"
    return None


def reply_subject(original: str | None, configured: str | None) -> str:
    """The configured subject, else ``Auto: `` and the original one (RFC 3834 §3.1.5)."""
    if configured:
        return configured
    text = (original or "").strip()
    if text:
        try:
            domain.check_header_text(text, "subject")
        except ValueError:
            text = ""
    return f"Auto: {text[:_SUBJECT_MAX]}" if text else "Automatic reply"


def correspondent(msg: Incoming) -> str | None:
    """Whom a reply goes to (RFC 3834 §4): the Return-Path, else From; None if neither is one
    plain address (or the path is null)."""
    if msg.return_path is not None:
        return _address(msg.return_path)
    return _address(msg.from_)


def decide(
    rule: Rule | None,
    msg: Incoming,
    own: Collection[str],
    last_replied: datetime | None,
    now: datetime,
) -> Verdict:
    """Answer ``msg`` or not. ``own``: the mailbox's addresses (lower case); ``last_replied``:
    when this mailbox last answered the correspondent."""
    if rule is None or not rule.active(now):
        return Verdict(None, "inactive")
    if rule.set_at is not None and msg.seen_at < rule.set_at:
        return Verdict(None, "before_autoreply")
    if msg.folder.upper() != "INBOX":
        return Verdict(None, "not_inbox")
    if (why := automatic(msg)) is not None:
        return Verdict(None, why)
    if msg.return_path == "":
        return Verdict(None, "null_sender")
    sender = _address(msg.from_)
    to = correspondent(msg)
    if to is None:
        return Verdict(None, "no_sender")
    if any(is_robot(a) for a in (to, sender) if a):
        return Verdict(None, "robot_sender")
    if any(a in own for a in (to, sender) if a):
        return Verdict(None, "own_address")
    if last_replied is not None and now - last_replied < timedelta(days=rule.interval_days):
        return Verdict(None, "recently_replied")
    mid = msg.message_id if msg.message_id and _MSG_ID.match(msg.message_id) else None
    return Verdict(
        Reply(
            to=to,
            subject=reply_subject(msg.subject, rule.subject),
            in_reply_to=mid,
            references=[mid] if mid else [],
        )
    )


def idempotency_key(mailbox_id: str, msg: Incoming, folder_uid: str) -> str:
    """One reply per original message: derived from the mailbox and the message's Message-ID
    (else its place on the server, ``folder_uid``), so the same message seen twice (another
    folder, a replayed event) is answered once."""
    ident = msg.message_id or folder_uid
    digest = hashlib.sha256(f"{mailbox_id}\n{ident}".encode()).hexdigest()[:40]
    return f"autoreply:{digest}"


def prepend_headers(raw: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """Put fixed ASCII header fields in front of a built message (order of fields does not
    matter, RFC 5322 §3.6). Only constant, checked names and values come here."""
    lines = b""
    for name, value in headers:
        if not (re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,60}", name) and value.isascii()):
            raise ValueError(f"not a plain header field: {name!r}")
        if any(c in value for c in "\r\n") or not value.isprintable():
            raise ValueError(f"not a plain header value: {value!r}")
        lines += f"{name}: {value}\r\n".encode("ascii")
    return lines + raw
