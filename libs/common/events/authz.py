"""Events of the authz service: grants on mailboxes."""

from __future__ import annotations

from typing import ClassVar, Literal

from libs.common.events.base import Event, register

Level = Literal["read", "write", "send", "configure"]
GranteeKind = Literal["employee", "department"]


class _Grant(Event):
    service: ClassVar[str] = "authz"
    aggregate: ClassVar[str] = "mailbox"


@register
class AccessGranted(_Grant):
    event_name: ClassVar[str] = "AccessGranted"
    grantee_kind: GranteeKind
    grantee_id: str
    level: Level
    on_behalf: bool = False
    expires_at: str | None = None
    revision: int | None = None
    """The tenant's authz revision this write created (see services/authz, "Revisions")."""


@register
class AccessRevoked(_Grant):
    event_name: ClassVar[str] = "AccessRevoked"
    grantee_kind: GranteeKind
    grantee_id: str
    reason: str = ""
    revision: int | None = None


@register
class AccessExpired(_Grant):
    event_name: ClassVar[str] = "AccessExpired"
    grantee_kind: GranteeKind
    grantee_id: str
    revision: int | None = None


@register
class AccessDenied(_Grant):
    event_name: ClassVar[str] = "AccessDenied"
    principal: str
    action: str
    reason: str
