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


@register
class SendFailed(_Send):
    event_name: ClassVar[str] = "SendFailed"
    idempotency_key: str
    reason_class: SendFailure
    detail: str = ""
    permanent: bool = True
    refused: list[str] = Field(default_factory=list)
