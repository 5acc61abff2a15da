"""What the sender's handlers depend on and raise: the wiring to other parts of the system
(permissions, credentials, signatures), who is asking, and the errors a send can end in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from libs.common.errors import MailroomError
from services.sender import domain, smtp
from services.sender.credentials import CredentialSource
from services.sender.models import Signature
from services.sender.permissions import AdminOnly, Permissions
from services.sender.repository import SendRecord


class Invalid(MailroomError):
    status = 422
    code = "invalid"


class LimitReached(MailroomError):
    status = 429
    code = "daily_limit_reached"

    def __init__(self, verdict: domain.LimitVerdict, now: datetime) -> None:
        self.retry_after = verdict.retry_after_s(now)
        super().__init__(
            f"the mailbox has sent {verdict.used} of its {verdict.limit} messages in 24 hours",
            details={
                "limit": verdict.limit,
                "used": verdict.used,
                "retry_after": self.retry_after,
                "frees_at": verdict.frees_at.isoformat() if verdict.frees_at else None,
            },
        )


class Signatures(Protocol):
    """Adds the chosen signature to the bodies: ``employee_id`` is the person sending (their
    personal signature goes above the mailbox's; their name and title fill placeholders).
    Implemented by ``signatures.ProjectedSignatures``; raises ``Invalid`` for an unknown name."""

    async def apply(
        self,
        mailbox: domain.Mailbox,
        choice: Signature,
        text: str | None,
        html: str | None,
        *,
        employee_id: str | None = None,
    ) -> tuple[str | None, str | None]: ...


class NoSignatures:
    async def apply(
        self,
        mailbox: domain.Mailbox,
        choice: Signature,
        text: str | None,
        html: str | None,
        *,
        employee_id: str | None = None,
    ) -> tuple[str | None, str | None]:
        return text, html


class Directory(Protocol):
    """Whether an employee is offboarded, asked of the registry's own directory (exact right
    after an offboarding answers); None when it cannot tell (the sender's projection decides)."""

    async def offboarded(self, tenant_id: str, employee_id: str) -> bool | None: ...


class NoDirectory:
    async def offboarded(self, tenant_id: str, employee_id: str) -> bool | None:
        return None


class _Unconfigured:
    async def get(self, tenant_id: str, mailbox_id: str, purpose: str) -> smtp.Credential | None:
        raise domain.DeliveryFailed("other", "no credential source is wired", permanent=False)

    def forget(self, tenant_id: str, mailbox_id: str) -> bool:
        return False


@dataclass
class Wiring:
    """What the sender asks other parts of the system; replaceable (tests, the benchmark)."""

    permissions: Permissions = field(default_factory=AdminOnly)
    credentials: CredentialSource = field(default_factory=_Unconfigured)
    signatures: Signatures = field(default_factory=NoSignatures)
    directory: Directory = field(default_factory=NoDirectory)


@dataclass(frozen=True, slots=True)
class Requester:
    tenant_id: str
    actor: str
    correlation_id: str
    on_behalf_of: str | None = None
    """The employee who sends for the mailbox (authz said ``on_behalf``)."""
    automatic: bool = False
    """An automatic reply (RFC 3834, the autoresponder): still sent from a mailbox whose
    sending stopped because its owner was offboarded (the leaver's autoreply keeps answering)."""

    @property
    def employee_id(self) -> str | None:
        """The employee calling (an ``employee:<id>`` actor), if any."""
        role, _, subject = self.actor.partition(":")
        return subject if role == "employee" and subject else None


@dataclass(frozen=True, slots=True)
class Submitted:
    record: SendRecord
    replayed: bool
