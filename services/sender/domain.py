"""Send decisions, pure: who the message is from, whether the daily limit allows it, what a
delivery outcome means (reason class, retry or not), and which text may go into a header.

Nothing here does I/O; the handlers feed it rows and clocks.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from email_validator import EmailNotValidError, validate_email

from libs.common.events.registry import AccountSettings, Server
from libs.common.events.sender import SendFailure

WINDOW = timedelta(hours=24)
MailboxStatus = Literal["active", "disabled", "deleted"]
State = Literal["queued", "delivering", "sent", "failed"]
PublicStatus = Literal["queued", "sending", "retrying", "sent", "failed"]
COUNTED_STATES: tuple[State, ...] = ("queued", "delivering", "sent")
"""Sends that use up the daily limit: all but failed ones (a failed send reached no one)."""
SELF_FILING = frozenset({"gmail", "office365", "exchange"})
"""Providers that file submitted mail in Sent themselves: a Sent copy would be a duplicate."""


# --- mailboxes and identity --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Mailbox:
    tenant_id: str
    mailbox_id: str
    address: str
    protocol: str
    owner_id: str | None
    status: MailboxStatus
    settings: AccountSettings
    sending_stopped_by: str | None = None
    """The offboarded owner while their personal mailbox may not send (``offboarding.py``)."""

    @property
    def outgoing(self) -> Server | None:
        """The server to submit to: the account's relay (``custom_smtp``) wins."""
        return self.settings.custom_smtp or self.settings.outgoing

    @property
    def imap(self) -> Server | None:
        inc = self.settings.incoming
        return inc if inc is not None and inc.protocol == "imap" else None

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2] or "mailroom.invalid"

    @property
    def from_address(self) -> str:
        return self.settings.send_as_address or self.address


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    address: str


@dataclass(frozen=True, slots=True)
class Identity:
    """``From`` (whom the message is from) and, when someone sends on the mailbox's behalf,
    ``Sender`` (who actually sent it, RFC 5322 §3.6.2)."""

    author: Person
    sender: Person | None = None


def identity(mailbox: Mailbox, owner_name: str | None, on_behalf: Person | None) -> Identity:
    """From = the send-as name and address; else the account's display name (or its owner's
    name) with its address."""
    s = mailbox.settings
    name = s.send_as_name if s.send_as_name is not None else (s.display_name or owner_name or "")
    author = Person(name, mailbox.from_address)
    if on_behalf is not None and on_behalf.address.lower() == author.address.lower():
        on_behalf = None  # sending as oneself is not "on behalf"
    return Identity(author, on_behalf)


def wants_sent_copy(mailbox: Mailbox, requested: bool | None, default: bool) -> bool:
    if mailbox.imap is None or mailbox.protocol in SELF_FILING:
        return False
    return default if requested is None else requested


def message_id(send_id: str, domain: str) -> str:
    return f"<{send_id}@{domain}>"


# --- the daily limit ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LimitVerdict:
    allowed: bool
    limit: int | None
    used: int
    frees_at: datetime | None = None

    def retry_after_s(self, now: datetime) -> int:
        if self.frees_at is None:
            return 0
        return max(1, int((self.frees_at - now).total_seconds() + 0.999))


def blocking_rank(limit: int | None, used: int) -> int | None:
    """Over the limit, the next send is possible once enough counted sends have left the
    window: with ``n`` counted and limit ``L`` that is when the ``(n-L+1)``-th oldest turns
    24 h old. Its 0-based rank among the counted sends, oldest first (None: not needed)."""
    if limit is None or used < limit or limit <= 0:
        return None
    return used - limit


def check_limit(
    limit: int | None, used: int, blocking: datetime | None, now: datetime
) -> LimitVerdict:
    """``used``: the mailbox's counted sends in the last 24 h; ``blocking``: the creation time
    of the one at ``blocking_rank``."""
    if limit is None or used < limit:
        return LimitVerdict(True, limit, used)
    if blocking is None:
        return LimitVerdict(False, limit, used, now + WINDOW)
    return LimitVerdict(False, limit, used, blocking + WINDOW)


# --- delivery outcomes --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Delivered:
    accepted: list[str]
    refused: dict[str, str] = field(default_factory=dict)
    reply: str = ""
    via: Literal["smtp", "ews"] = "smtp"


class DeliveryFailed(Exception):
    """A delivery attempt failed. ``permanent`` failures are never retried."""

    def __init__(
        self,
        reason_class: SendFailure,
        detail: str,
        permanent: bool,
        *,
        refused: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason_class: SendFailure = reason_class
        self.detail = detail[:1000]
        self.permanent = permanent
        self.refused = refused or {}


def smtp_reply_failure(code: int, message: str, stage: str) -> DeliveryFailed:
    """Classify an SMTP error reply: 4xx is transient, 5xx permanent (RFC 5321 §4.2.1)."""
    text = f"{stage}: {code} {message}".strip()
    if 400 <= code < 500:
        return DeliveryFailed("server_down", text, permanent=False)
    if stage == "auth" or code in (530, 534, 535, 538):
        return DeliveryFailed("auth_failed", text, permanent=True)
    if stage == "rcpt":
        return DeliveryFailed("recipient_refused", text, permanent=True)
    if code >= 500:
        return DeliveryFailed("other", text, permanent=True)
    return DeliveryFailed("other", text, permanent=False)  # a 1xx-3xx where none belongs


@dataclass(frozen=True, slots=True)
class NextStep:
    retry_at: datetime | None  # None: final failure

    @property
    def final(self) -> bool:
        return self.retry_at is None


def after_failure(
    failure: DeliveryFailed, attempts: int, max_attempts: int, backoff_s: float, now: datetime
) -> NextStep:
    if failure.permanent or attempts >= max_attempts:
        return NextStep(None)
    return NextStep(now + timedelta(seconds=backoff_s))


def public_status(state: str, attempts: int) -> PublicStatus:
    if state == "delivering":
        return "sending"
    if state == "queued":
        return "retrying" if attempts > 0 else "queued"
    return "sent" if state == "sent" else "failed"


# --- what may go into a header ------------------------------------------------------------
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e") | frozenset(
    "\u2066\u2067\u2068\u2069"
)
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp", "Co", "Cn"})


def check_header_text(value: str, what: str) -> str:
    """Refuse text that could break out of a header or disguise itself: control characters
    (CR, LF, NUL, TAB...), Unicode line/paragraph separators, surrogates, unassigned code
    points and bidirectional overrides. Everything else is encoded safely by the MIME layer."""
    for ch in value:
        if ch in BIDI_CONTROLS or unicodedata.category(ch) in _BAD_CATEGORIES:
            raise ValueError(f"{what} contains a forbidden character U+{ord(ch):04X}")
    return value


def check_address(value: str) -> str:
    """An addr-spec (``local@domain``) only: no display name, comments, quoting or routes.
    Returns it normalised (IDN domains in ASCII)."""
    check_header_text(value, "address")
    if len(value) > 254 or any(c in value for c in ' <>(),;:"[]\\'):
        raise ValueError(f"not a plain email address: {value!r}")
    try:
        valid = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    return valid.ascii_email or valid.normalized


def fingerprint(doc: Any) -> str:
    """The request's identity for Idempotency-Key reuse detection."""
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()
