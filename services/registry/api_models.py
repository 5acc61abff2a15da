"""Request and response models of the registry API. No response model has a secret field:
credentials are write-only (``SecretStr``) and reported as ``has_credential``/version only."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from libs.common.events.registry import AuthMode, Ownership, Protocol, Security, Server
from services.registry.repository import AccountRow, EmployeeRow
from services.registry.validation import ServerSpec

Secret = SecretStr


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerIn(_In):
    host: str | None = Field(None, max_length=253)
    port: int | None = Field(None, ge=1, le=65535)
    security: Security | None = None
    protocol: Literal["imap", "pop3", "smtp", "ews"] | None = Field(
        None, description="inferred from the account's protocol when omitted"
    )
    url: str | None = Field(None, max_length=2048, description="EWS endpoint (Exchange)")

    def spec(self) -> ServerSpec:
        return ServerSpec(self.host, self.port, self.security, self.protocol, self.url)


NULLABLE = frozenset(
    {
        "custom_smtp",
        "polling_interval_s",
        "send_as_name",
        "send_as_address",
        "daily_send_limit",
        "owner_id",
    }
)


class _AccountFields(_In):
    display_name: str | None = Field(None, max_length=255)
    incoming: ServerIn | None = None
    outgoing: ServerIn | None = None
    custom_smtp: ServerIn | None = Field(None, description="relay used instead of outgoing")
    allow_insecure: bool | None = Field(None, description="opt in to security: none")
    auth_mode: AuthMode | None = None
    username: str | None = Field(None, max_length=320)
    polling_interval_s: int | None = Field(None, description="30..86400 seconds")
    leave_on_server: bool | None = Field(None, description="POP3: leave a copy on the server")
    send_as_name: str | None = Field(None, max_length=255)
    send_as_address: str | None = Field(None, max_length=320)
    auto_bcc: list[str] | None = Field(None, max_length=100)
    daily_send_limit: int | None = None
    forwarding: list[str] | None = Field(None, max_length=100, description="at most 20")
    folders: list[str] | None = Field(None, max_length=500)
    owner_id: str | None = Field(None, max_length=64, description="employee id")
    ownership: Ownership | None = None

    def values(self) -> dict[str, Any]:
        """The fields sent, servers as ServerSpec (for the domain). ``null`` clears a nullable
        field and is ignored for the others."""
        out: dict[str, Any] = {}
        for name in self.model_fields_set & set(_AccountFields.model_fields):
            value = getattr(self, name)
            if value is None and name not in NULLABLE:
                continue
            out[name] = value.spec() if isinstance(value, ServerIn) else value
        return out


class AccountIn(_AccountFields):
    address: str = Field(max_length=320)
    protocol: Protocol | None = Field(None, description="taken from the preset when omitted")
    preset_id: str | None = Field(None, max_length=64)
    password: Secret | None = Field(
        None,
        min_length=1,
        max_length=8192,
        description="password, app password or OAuth2 token; write-only, never returned",
    )

    def fingerprint(self) -> str:
        """Hash of the request without its secret (Idempotency-Key body check)."""
        doc = self.model_dump(mode="json", exclude={"password"}, exclude_unset=True)
        doc["has_password"] = self.password is not None
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()


class AccountPatch(_AccountFields):
    """Only the fields sent are changed; ``null`` clears an optional field."""


class CredentialIn(_In):
    password: Secret = Field(min_length=1, max_length=8192)


class DisableIn(_In):
    reason: str = Field("", max_length=500)


class AccountOut(BaseModel):
    id: str
    address: str
    display_name: str
    protocol: Protocol
    status: Literal["active", "disabled"]
    ownership: Ownership
    owner_id: str | None
    preset_id: str | None
    incoming: Server | None
    outgoing: Server | None
    custom_smtp: Server | None
    allow_insecure: bool
    auth_mode: AuthMode
    username: str
    polling_interval_s: int | None
    leave_on_server: bool
    send_as_name: str | None
    send_as_address: str | None
    auto_bcc: list[str]
    daily_send_limit: int | None
    forwarding: list[str]
    folders: list[str]
    has_credential: bool
    credential_version: int | None
    kek_version: int | None
    created_at: datetime
    updated_at: datetime
    last_leased_at: datetime | None
    version: int

    @classmethod
    def of(cls, r: AccountRow) -> AccountOut:
        s = r.settings
        return cls(
            id=r.id,
            address=r.address,
            display_name=r.display_name,
            protocol=r.protocol,
            status=r.status,
            ownership=r.ownership,
            owner_id=r.owner_id,
            preset_id=r.preset_id,
            incoming=s.incoming,
            outgoing=s.outgoing,
            custom_smtp=s.custom_smtp,
            allow_insecure=s.allow_insecure,
            auth_mode=s.auth_mode,
            username=s.username,
            polling_interval_s=s.polling_interval_s,
            leave_on_server=s.leave_on_server,
            send_as_name=s.send_as_name,
            send_as_address=s.send_as_address,
            auto_bcc=s.auto_bcc,
            daily_send_limit=s.daily_send_limit,
            forwarding=s.forwarding,
            folders=s.folders,
            has_credential=r.has_credential,
            credential_version=r.credential_version,
            kek_version=r.kek_version,
            created_at=r.created_at,
            updated_at=r.updated_at,
            last_leased_at=r.last_leased_at,
            version=r.version,
        )


class AccountPage(BaseModel):
    items: list[AccountOut]
    next_cursor: str | None


class DeletedOut(BaseModel):
    id: str
    address: str
    deleted: bool = True
    credential_shredded: bool


class KeyStatusOut(BaseModel):
    active_version: int
    versions: list[int]
    managed: bool = Field(description="the embedded key file, which the registry may extend")
    blobs_by_version: dict[str, int] = Field(description="this tenant's credentials per KEK")


class RotateIn(_In):
    generate: bool | None = Field(
        None,
        description="add a new KEK version first (embedded key file only); "
        "default: yes for the embedded file, no for a mounted ring",
    )


class RotateOut(BaseModel):
    generated: bool
    active_version: int
    versions: list[int]
    rewrapped: int
    failed: list[str]
    blobs_by_version: dict[str, int]


class RetireIn(_In):
    version: int = Field(ge=1)


class RetireOut(BaseModel):
    version: int
    removed_from_keyring: bool
    active_version: int
    versions: list[int]
    message: str


# --- employees --------------------------------------------------------------------------------
class EmployeeIn(_In):
    name: str = Field(min_length=1, max_length=255)
    email: str = Field(max_length=320)
    title: str = Field("", max_length=255)
    department: str | None = Field(None, max_length=255)


class EmployeePatch(_In):
    name: str | None = Field(None, min_length=1, max_length=255)
    email: str | None = Field(None, max_length=320)
    title: str | None = Field(None, max_length=255)
    department: str | None = Field(None, max_length=255)
    status: Literal["active", "offboarded"] | None = None
    successor_id: str | None = Field(None, max_length=64, description="when offboarding")


class EmployeeOut(BaseModel):
    id: str
    name: str
    email: str
    title: str
    department: str | None
    status: Literal["active", "offboarded"]
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def of(cls, r: EmployeeRow) -> EmployeeOut:
        return cls(
            id=r.id,
            name=r.name,
            email=r.email,
            title=r.title,
            department=r.department,
            status=r.status,
            created_at=r.created_at,
            updated_at=r.updated_at,
            version=r.version,
        )


class EmployeePage(BaseModel):
    items: list[EmployeeOut]
    next_cursor: str | None


class DepartmentOut(BaseModel):
    name: str
    member_count: int
    members: list[EmployeeOut]


class DepartmentList(BaseModel):
    items: list[DepartmentOut]


class PresetOut(BaseModel):
    id: str
    name: str
    kind: Protocol
    domains: list[str]
    incoming: dict[str, Any] | None
    outgoing: dict[str, Any] | None
    auth_modes: list[AuthMode]
    hints: list[str]
    requires_ews_url: bool


class PresetList(BaseModel):
    items: list[PresetOut]
