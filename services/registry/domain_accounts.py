"""The account aggregate, pure: ``decide(command, state) -> events`` and ``evolve(state, event)``.

No I/O: handlers seal credentials, check cross-aggregate facts (duplicate address, owner exists)
and pass the results in the commands. Invalid input raises ``validation.Invalid`` (422), invalid
transitions raise ``Conflict`` (409) or ``NotFound`` (404).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from libs.common.errors import Conflict, MailroomError, NotFound
from libs.common.events.base import Event
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
    MailboxHandedOver,
    Ownership,
    Protocol,
    Server,
)
from services.registry import validation as v
from services.registry.presets import Preset

Status = Literal["new", "active", "disabled", "deleted"]
LEASE_SERVICES = frozenset({"sync", "sender"})
#: Who may open a stored secret: the leasing services, and the registry for connection tests.
ACCESSORS = LEASE_SERVICES | {"registry"}

#: Fields of :class:`AccountSettings` an update may change (plus owner_id and ownership).
SETTINGS_FIELDS = (
    "display_name",
    "incoming",
    "outgoing",
    "custom_smtp",
    "allow_insecure",
    "auth_mode",
    "username",
    "polling_interval_s",
    "leave_on_server",
    "send_as_name",
    "send_as_address",
    "auto_bcc",
    "daily_send_limit",
    "forwarding",
    "folders",
)
UPDATABLE = frozenset({*SETTINGS_FIELDS, "owner_id", "ownership"})


@dataclass(frozen=True, slots=True)
class AccountState:
    id: str
    version: int = 0
    status: Status = "new"
    address: str = ""
    protocol: Protocol = "custom"
    ownership: Ownership = "personal"
    owner_id: str | None = None
    preset_id: str | None = None
    settings: AccountSettings = field(default_factory=AccountSettings)
    credential: CredentialRef | None = None


# --- commands ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AddAccount:
    address: str
    protocol: Protocol | None = None
    preset_id: str | None = None
    ownership: Ownership = "personal"
    owner_id: str | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    """Settings given by the caller (keys of SETTINGS_FIELDS; servers as ServerSpec)."""
    credential: CredentialRef | None = None


@dataclass(frozen=True, slots=True)
class UpdateAccount:
    changes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DisableAccount:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ReactivateAccount:
    pass


@dataclass(frozen=True, slots=True)
class DeleteAccount:
    pass


@dataclass(frozen=True, slots=True)
class ReplaceCredential:
    credential: CredentialRef
    cause: Literal["replaced", "oauth_refresh"] = "replaced"
    """``oauth_refresh``: the registry refreshed an OAuth2 access token (new blob version)."""


@dataclass(frozen=True, slots=True)
class RewrapCredential:
    """KEK rotation: the same secret and version, its data key wrapped under a new KEK."""

    credential: CredentialRef


@dataclass(frozen=True, slots=True)
class AccessCredential:
    by_service: str
    purpose: str
    lease_expires_at: str


@dataclass(frozen=True, slots=True)
class HandOver:
    """The owner leaves: the mailbox (history, sync, grants of others) goes to a successor."""

    to_owner_id: str


Command = (
    AddAccount
    | UpdateAccount
    | DisableAccount
    | ReactivateAccount
    | DeleteAccount
    | ReplaceCredential
    | RewrapCredential
    | AccessCredential
    | HandOver
)


# --- evolve -----------------------------------------------------------------------------------
def evolve(state: AccountState, event: Event) -> AccountState:
    s = replace(state, version=state.version + 1)
    match event:
        case AccountAdded():
            return replace(
                s,
                status="active",
                address=event.address,
                protocol=event.protocol,
                ownership=event.ownership,
                owner_id=event.owner_id,
                preset_id=event.preset_id,
                settings=event.settings,
                credential=event.credential,
            )
        case AccountUpdated():
            return replace(
                s, settings=event.settings, owner_id=event.owner_id, ownership=event.ownership
            )
        case AccountDisabled():
            return replace(s, status="disabled")
        case AccountReactivated():
            return replace(s, status="active")
        case AccountDeleted():
            return replace(s, status="deleted", credential=None)
        case CredentialRotated():
            return replace(s, credential=event.credential)
        case MailboxHandedOver():
            return replace(s, owner_id=event.to_owner_id)
    return s  # CredentialAccessed and unknown facts only advance the version


def fold(account_id: str, events: Iterable[Event]) -> AccountState:
    state = AccountState(account_id)
    for e in events:
        state = evolve(state, e)
    return state


# --- decide -----------------------------------------------------------------------------------
def decide(command: Command, state: AccountState) -> list[Event]:
    if isinstance(command, AddAccount):
        if state.status != "new":
            raise Conflict(f"account {state.id} already exists", code="account_exists")
        return [_add(command)]
    _require_existing(state)
    match command:
        case UpdateAccount():
            _require_active(state)
            return _update(state, command.changes)
        case DisableAccount():
            if state.status == "disabled":
                raise Conflict("the account is already disabled", code="already_disabled")
            return [AccountDisabled(reason=command.reason)]
        case ReactivateAccount():
            if state.status == "active":
                raise Conflict("the account is not disabled", code="not_disabled")
            return [AccountReactivated()]
        case DeleteAccount():
            return [
                AccountDeleted(
                    address=state.address, credential_shredded=state.credential is not None
                )
            ]
        case ReplaceCredential():
            _require_active(state)
            expected = next_credential_version(state)
            if command.credential.version != expected:
                raise Conflict(
                    f"credential version {command.credential.version} does not "
                    f"follow {expected - 1}",
                    code="credential_version",
                )
            return [CredentialRotated(credential=command.credential, cause=command.cause)]
        case RewrapCredential():
            return _rewrap(state, command.credential)
        case AccessCredential():
            return [_access(state, command)]
        case HandOver():
            if state.owner_id == command.to_owner_id:
                return []
            return [
                MailboxHandedOver(from_owner_id=state.owner_id, to_owner_id=command.to_owner_id)
            ]
    raise TypeError(f"not an account command: {command!r}")  # pragma: no cover


def next_credential_version(state: AccountState) -> int:
    return state.credential.version + 1 if state.credential is not None else 1


def _require_existing(state: AccountState) -> None:
    if state.status == "new":
        raise NotFound(f"no account {state.id}")
    if state.status == "deleted":
        raise NotFound(f"account {state.id} was deleted", code="account_deleted")


def _require_active(state: AccountState) -> None:
    if state.status == "disabled":
        raise Conflict(
            "the account is disabled: reactivate it before changing it", code="account_disabled"
        )


def _add(cmd: AddAccount) -> AccountAdded:
    address = v.normalise_address(cmd.address)
    preset = v.load_preset(cmd.preset_id) if cmd.preset_id else None
    protocol: Protocol | None = cmd.protocol or (preset.kind if preset else None)
    if protocol is None:
        raise v.Invalid(
            "protocol is required without a preset",
            code="protocol_required",
            details={"field": "protocol"},
        )
    values = dict(cmd.values)
    if preset is not None:
        inc, out, username = v.preset_servers(preset, protocol, address)
        values.setdefault("incoming", inc)
        values.setdefault("outgoing", out)
        if username:
            values.setdefault("username", username)
        values.setdefault("auth_mode", preset.auth_modes[0])
        values.setdefault("display_name", "")
    if values.get("incoming") is not None and preset is not None:
        values["incoming"] = _with_preset_ews(values["incoming"], preset)
    values.setdefault("username", address)
    settings = v.build_settings(protocol, values, preset)
    v.check_cross(address, settings)
    return AccountAdded(
        address=address,
        protocol=protocol,
        ownership=cmd.ownership,
        owner_id=cmd.owner_id,
        preset_id=preset.id if preset else None,
        settings=settings,
        credential=cmd.credential,
    )


def _with_preset_ews(spec: v.ServerSpec, preset: Preset) -> v.ServerSpec:
    if spec.protocol == "ews" and spec.url is None and preset.ews_url:
        return replace(spec, url=preset.ews_url)
    return spec


def _spec(server: Server | None) -> v.ServerSpec | None:
    if server is None:
        return None
    return v.ServerSpec(server.host, server.port, server.security, server.protocol, server.url)


def _update(state: AccountState, changes: Mapping[str, Any]) -> list[Event]:
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise MailroomError(f"cannot change {sorted(unknown)}", code="not_updatable")
    current: dict[str, Any] = state.settings.model_dump()
    for slot in ("incoming", "outgoing", "custom_smtp"):
        current[slot] = _spec(getattr(state.settings, slot))
    values = {**current, **{k: val for k, val in changes.items() if k in SETTINGS_FIELDS}}
    preset = _known_preset(state.preset_id)
    settings = v.build_settings(state.protocol, values, preset)
    v.check_cross(state.address, settings)
    owner_id = changes.get("owner_id", state.owner_id)
    ownership: Ownership = changes.get("ownership") or state.ownership
    changed = [k for k in SETTINGS_FIELDS if getattr(settings, k) != getattr(state.settings, k)]
    if owner_id != state.owner_id:
        changed.append("owner_id")
    if ownership != state.ownership:
        changed.append("ownership")
    if not changed:
        return []
    return [
        AccountUpdated(changed=changed, settings=settings, owner_id=owner_id, ownership=ownership)
    ]


def _known_preset(preset_id: str | None) -> Preset | None:
    if not preset_id:
        return None
    try:
        return v.load_preset(preset_id)
    except v.Invalid:  # a preset removed in a later release must not block edits
        return None


def _rewrap(state: AccountState, new: CredentialRef) -> list[Event]:
    old = state.credential
    if old is None:
        raise Conflict("the account has no credential", code="no_credential")
    if (new.blob_id, new.version, new.field) != (old.blob_id, old.version, old.field):
        raise Conflict("the credential changed during KEK rotation", code="credential_version")
    if new.kek_version == old.kek_version:
        return []
    return [CredentialRotated(credential=new, cause="kek_rotation")]


def _access(state: AccountState, cmd: AccessCredential) -> CredentialAccessed:
    if cmd.by_service not in ACCESSORS:
        raise v.Invalid(
            f"service {cmd.by_service!r} may not lease credentials",
            code="unknown_service",
            details={"field": "service"},
        )
    if state.status == "disabled":
        raise Conflict("the account is disabled", code="account_disabled")
    if state.credential is None:
        raise Conflict("the account has no stored credential", code="no_credential")
    return CredentialAccessed(
        credential=state.credential,
        by_service=cmd.by_service,
        purpose=cmd.purpose,
        lease_expires_at=cmd.lease_expires_at,
    )
