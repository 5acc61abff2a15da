"""Events of the sync service: health of each mailbox and the mail it sees (metadata only)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from libs.common.events.base import Event, register

SyncState = Literal["online", "syncing", "offline", "auth_failed", "tls_error", "disabled"]
FailureClass = Literal["network", "auth", "tls", "protocol", "timeout", "unknown"]


class _Sync(Event):
    service: ClassVar[str] = "sync"
    aggregate: ClassVar[str] = "mailbox"


@register
class AccountStatusChanged(_Sync):
    event_name: ClassVar[str] = "AccountStatusChanged"
    status: SyncState
    previous: SyncState | None = None
    detail: str = ""


@register
class SyncFailed(_Sync):
    event_name: ClassVar[str] = "SyncFailed"
    reason_class: FailureClass
    detail: str = ""
    attempt: int = 1
    retry_in_s: float | None = None


@register
class SyncRecovered(_Sync):
    event_name: ClassVar[str] = "SyncRecovered"
    down_since: str


@register
class MailMissingDetected(_Sync):
    event_name: ClassVar[str] = "MailMissingDetected"
    kind: Literal["vanished", "uidvalidity_reset", "silence"]
    folder: str = "INBOX"
    detail: str = ""
    uids: list[int] = Field(default_factory=list)


@register
class MessageReceived(_Sync):
    event_name: ClassVar[str] = "MessageReceived"
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None = None
    from_: str | None = Field(default=None, alias="from")
    to: list[str] = Field(default_factory=list)
    subject: str | None = None
    date: str | None = None
    size: int | None = None
    uidl: str | None = None
    """POP3 only: the server's UIDL (``uid`` is then sync's own number, ``uidvalidity`` 0)."""
    # Header facts an autoresponder needs (RFC 3834), all optional: events stored before
    # they existed still decode (absent: not known, treated as absent headers).
    return_path: str | None = None
    """The Return-Path address; ``""`` for the null path ``<>`` (a bounce: never answered)."""
    auto_submitted: str | None = None
    """The Auto-Submitted value (RFC 3834 §5), e.g. ``auto-replied``; None when absent."""
    precedence: str | None = None
    """The Precedence value (``bulk``, ``list``, ``junk``...), lower case."""
    mailing_list: bool = False
    """The message has List-Id or List-Unsubscribe (RFC 2919 / 2369): it came from a list."""
    auto_response_suppress: str | None = None
    """X-Auto-Response-Suppress (Microsoft), e.g. ``All`` or ``OOF``."""


# --- alerts (services/sync/alerts_*.py) ---------------------------------------------------
AlertKind = Literal["sync_failed", "auth_failed", "mail_missing", "offline"]
AlertNotice = Literal["sync_failed", "auth_failed", "mail_missing", "offline", "recovered"]
MissingKind = Literal["vanished", "uidvalidity_reset", "silence"]


class _AlertRule(Event):
    service: ClassVar[str] = "sync"
    aggregate: ClassVar[str] = "alert_rule"


@register
class AlertRuleSet(_AlertRule):
    """A tenant's alert rule created or changed (never its webhook secret: only whether one is
    set, and a counter of its replacements)."""

    event_name: ClassVar[str] = "AlertRuleSet"
    name: str
    enabled: bool = True
    kinds: list[AlertKind]
    reason_classes: list[FailureClass] = Field(default_factory=list)
    missing_kinds: list[MissingKind] = Field(default_factory=list)
    offline_after_s: int | None = None
    mailboxes: list[str] = Field(default_factory=list)
    """Empty: every mailbox of the tenant."""
    email_mailbox_id: str | None = None
    email_to: list[str] = Field(default_factory=list)
    webhook_url: str | None = None
    webhook_secret_version: int = 0
    throttle_s: int = 3600
    notify_recovery: bool = True


@register
class AlertRuleDeleted(_AlertRule):
    event_name: ClassVar[str] = "AlertRuleDeleted"
    name: str = ""


class _Alert(Event):
    service: ClassVar[str] = "sync"
    aggregate: ClassVar[str] = "alert"


@register
class AlertSent(_Alert):
    """An alert (or recovery notice) delivered on one channel."""

    event_name: ClassVar[str] = "AlertSent"
    rule_id: str
    mailbox_id: str
    kind: AlertNotice
    channel: Literal["email", "webhook"]
    attempt: int
    detail: str = ""


@register
class AlertFailed(_Alert):
    """A delivery attempt failed; ``final``: no more attempts (dead-lettered, kept for a retry
    by an admin)."""

    event_name: ClassVar[str] = "AlertFailed"
    rule_id: str
    mailbox_id: str
    kind: AlertNotice
    channel: Literal["email", "webhook"]
    attempt: int
    error: str
    final: bool = False
    retry_in_s: float | None = None
