"""The typed event client: every Mailroom event model, importable from one place."""

from libs.common.events import authz, registry, sender, sync
from libs.common.events.authz import AccessDenied, AccessExpired, AccessGranted, AccessRevoked
from libs.common.events.base import (
    CATALOGUE,
    Catalogue,
    Event,
    EventDecodeError,
    UnknownEventType,
    register,
)
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.registry import (
    AccountAdded,
    AccountDeleted,
    AccountDisabled,
    AccountReactivated,
    AccountSettings,
    AccountUpdated,
    CredentialAccessed,
    CredentialRef,
    CredentialRotated,
    EmployeeAdded,
    EmployeeOffboarded,
    EmployeeReinstated,
    EmployeeUpdated,
    MailboxHandedOver,
    Server,
)
from libs.common.events.sender import MessageSent, SendFailed
from libs.common.events.sync import (
    AccountStatusChanged,
    MailMissingDetected,
    MessageReceived,
    SyncFailed,
    SyncRecovered,
)

__all__ = [
    "CATALOGUE",
    "AccessDenied",
    "AccessExpired",
    "AccessGranted",
    "AccessRevoked",
    "AccountAdded",
    "AccountDeleted",
    "AccountDisabled",
    "AccountReactivated",
    "AccountSettings",
    "AccountStatusChanged",
    "AccountUpdated",
    "Catalogue",
    "CommandContext",
    "CredentialAccessed",
    "CredentialRef",
    "CredentialRotated",
    "EmployeeAdded",
    "EmployeeOffboarded",
    "EmployeeReinstated",
    "EmployeeUpdated",
    "Envelope",
    "Event",
    "EventDecodeError",
    "MailMissingDetected",
    "MailboxHandedOver",
    "MessageReceived",
    "MessageSent",
    "SendFailed",
    "Server",
    "SyncFailed",
    "SyncRecovered",
    "UnknownEventType",
    "authz",
    "register",
    "registry",
    "sender",
    "sync",
]
