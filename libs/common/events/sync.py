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
