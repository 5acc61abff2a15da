"""Events of the registry service: accounts, credentials, employees, departments."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.common.events.base import Event, register

Protocol = Literal["imap", "pop3", "exchange", "office365", "gmail", "custom"]
Security = Literal["ssl", "starttls", "none"]
AuthMode = Literal["password", "app_password", "oauth2"]
Ownership = Literal["personal", "shared"]


class Server(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    protocol: Literal["imap", "pop3", "smtp", "ews"]
    host: str
    port: int = Field(ge=1, le=65535)
    security: Security
    url: str | None = None  # EWS endpoint for Exchange


class CredentialRef(BaseModel):
    """Points at an encrypted blob in the registry's secret table; never the secret itself.

    ``version`` counts replacements of the secret (1, 2, ...); ``kek_version`` is the KEK that
    wraps the blob's data key; ``field`` names the secret ("password" or "oauth_token").
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    blob_id: str
    version: int
    kek_version: int
    field: str = "password"


class AccountSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    display_name: str = ""
    incoming: Server | None = None
    outgoing: Server | None = None
    auth_mode: AuthMode = "password"
    username: str = ""
    polling_interval_s: int | None = None
    leave_on_server: bool = True
    send_as_name: str | None = None
    send_as_address: str | None = None
    auto_bcc: list[str] = Field(default_factory=list)
    daily_send_limit: int | None = None
    forwarding: list[str] = Field(default_factory=list, max_length=20)
    folders: list[str] = Field(default_factory=lambda: ["INBOX"])
    allow_insecure: bool = False
    """The owner opted in to a server with ``security: none`` (plain text on the wire)."""
    custom_smtp: Server | None = None
    """A relay that replaces ``outgoing`` for sending (e.g. the organisation's own relay)."""


class _Account(Event):
    service: ClassVar[str] = "registry"
    aggregate: ClassVar[str] = "account"


@register
class AccountAdded(_Account):
    event_name: ClassVar[str] = "AccountAdded"
    address: str
    protocol: Protocol
    ownership: Ownership = "personal"
    owner_id: str | None = None
    preset_id: str | None = None
    settings: AccountSettings
    credential: CredentialRef | None = None


@register
class AccountUpdated(_Account):
    event_name: ClassVar[str] = "AccountUpdated"
    changed: list[str]
    settings: AccountSettings
    owner_id: str | None = None
    ownership: Ownership = "personal"


@register
class AccountDisabled(_Account):
    event_name: ClassVar[str] = "AccountDisabled"
    reason: str = ""


@register
class AccountReactivated(_Account):
    event_name: ClassVar[str] = "AccountReactivated"


@register
class AccountDeleted(_Account):
    event_name: ClassVar[str] = "AccountDeleted"
    address: str
    credential_shredded: bool = True


@register
class CredentialRotated(_Account):
    event_name: ClassVar[str] = "CredentialRotated"
    credential: CredentialRef
    cause: Literal["replaced", "kek_rotation", "oauth_refresh"] = "replaced"


@register
class CredentialAccessed(_Account):
    event_name: ClassVar[str] = "CredentialAccessed"
    credential: CredentialRef
    by_service: str
    purpose: str
    lease_expires_at: str


@register
class MailboxHandedOver(_Account):
    event_name: ClassVar[str] = "MailboxHandedOver"
    from_owner_id: str | None
    to_owner_id: str


class _Employee(Event):
    service: ClassVar[str] = "registry"
    aggregate: ClassVar[str] = "employee"


@register
class EmployeeAdded(_Employee):
    event_name: ClassVar[str] = "EmployeeAdded"
    name: str
    email: str
    title: str = ""
    department: str | None = None


@register
class EmployeeUpdated(_Employee):
    event_name: ClassVar[str] = "EmployeeUpdated"
    name: str
    email: str
    title: str = ""
    department: str | None = None


@register
class EmployeeOffboarded(_Employee):
    event_name: ClassVar[str] = "EmployeeOffboarded"
    successor_id: str | None = None
    autoreply: str | None = None
    mailbox_ids: list[str] = Field(default_factory=list)


@register
class EmployeeReinstated(_Employee):
    event_name: ClassVar[str] = "EmployeeReinstated"


class OrgMailSettings(BaseModel):
    """The organisation's own mail servers: addresses in ``domains`` get them filled in."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    domains: list[str] = Field(default_factory=list)
    incoming: Server
    outgoing: Server | None = None
    username_template: str = "%EMAILADDRESS%"
    auth_mode: AuthMode = "password"
    allow_insecure: bool = False
    polling_interval_s: int | None = None
    employee_self_service: Literal["off", "org_domains", "any"] = "org_domains"
    """Which mailboxes an employee may add for themselves (owner = the employee)."""


class _Org(Event):
    service: ClassVar[str] = "registry"
    aggregate: ClassVar[str] = "org"


@register
class OrgMailSettingsChanged(_Org):
    event_name: ClassVar[str] = "OrgMailSettingsChanged"
    changed: list[str]
    settings: OrgMailSettings


# --- signatures (issue 8): sanitised HTML and its derived plain text; not secrets ----------
@register
class SignatureSet(_Account):
    """A mailbox signature was set: ``name`` is ``default`` or a named alternate."""

    event_name: ClassVar[str] = "SignatureSet"
    name: str
    html: str
    text: str


@register
class SignatureRemoved(_Account):
    event_name: ClassVar[str] = "SignatureRemoved"
    name: str


@register
class PersonalSignatureSet(_Employee):
    """An employee's own signature, added above the mailbox signature when they send."""

    event_name: ClassVar[str] = "PersonalSignatureSet"
    html: str
    text: str


@register
class PersonalSignatureRemoved(_Employee):
    event_name: ClassVar[str] = "PersonalSignatureRemoved"
