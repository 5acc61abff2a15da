"""Events of the sender service."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from libs.common.events.base import Event, register

SendFailure = Literal["recipient_refused", "auth_failed", "limit_reached", "server_down", "other"]


class _Send(Event):
    service: ClassVar[str] = "sender"
    aggregate: ClassVar[str] = "mailbox"


@register
class MessageSent(_Send):
    event_name: ClassVar[str] = "MessageSent"
    message_id: str
    idempotency_key: str
    recipients: int
    via: Literal["smtp", "ews"] = "smtp"
    on_behalf_of: str | None = None
    send_id: str | None = None
    attempts: int = 1
    refused: list[str] = Field(default_factory=list)
    """Recipients the server refused while it accepted the message for the others."""


@register
class SendFailed(_Send):
    event_name: ClassVar[str] = "SendFailed"
    idempotency_key: str
    reason_class: SendFailure
    detail: str = ""
    permanent: bool = True
    refused: list[str] = Field(default_factory=list)
    send_id: str | None = None
    """None when no send was recorded (``limit_reached`` refuses before that)."""
    attempts: int = 0
    retry_at: str | None = None
    """When a transient failure is tried again, or when the daily limit frees a slot."""


@register
class AutoreplySet(_Send):
    """The mailbox's autoresponder (RFC 3834) was set or changed: it answers new mail seen by
    sync in its window, once per correspondent per ``interval_days``."""

    event_name: ClassVar[str] = "AutoreplySet"
    text: str
    html: str | None = None
    subject: str | None = None
    """None: ``Auto: `` and the original subject."""
    starts_at: str | None = None
    ends_at: str | None = None
    interval_days: int = 7
    source: Literal["api", "offboarding"] = "api"
    employee_id: str | None = None
    """``offboarding``: the leaver whose offboarding set it (reinstating clears it)."""


@register
class AutoreplyCleared(_Send):
    event_name: ClassVar[str] = "AutoreplyCleared"
    reason: Literal["api", "reinstated"] = "api"
