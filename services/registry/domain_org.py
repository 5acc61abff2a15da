"""The organisation aggregate (one per tenant), pure: its own mail servers.

An admin sets the organisation's incoming and outgoing servers, the username template and the
default polling interval once (``OrgMailSettingsChanged``); an account whose address is in one of
the organisation's ``domains`` then needs only its address and password: :func:`fill` supplies
the rest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from libs.common.errors import NotFound
from libs.common.events.base import Event
from libs.common.events.registry import (
    AuthMode,
    OrgMailSettings,
    OrgMailSettingsChanged,
    Protocol,
    Server,
)
from services.registry import validation as v

SelfService = Literal["off", "org_domains", "any"]
PLACEHOLDERS = frozenset({"%EMAILADDRESS%", "%EMAILLOCALPART%", "%EMAILDOMAIN%"})
MAX_DOMAINS = 100
_PLACEHOLDER = re.compile(r"%[A-Za-z]*%")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
KIND: dict[str, Protocol] = {"imap": "imap", "pop3": "pop3", "ews": "exchange"}
FIELDS = (
    "domains",
    "incoming",
    "outgoing",
    "username_template",
    "auth_mode",
    "allow_insecure",
    "polling_interval_s",
    "employee_self_service",
)


def org_id(tenant_id: str) -> str:
    """The tenant's organisation aggregate id (a valid subject token of at most 64 chars)."""
    if len(tenant_id) <= 60:
        return f"org-{tenant_id}"
    return f"org-{hashlib.sha256(tenant_id.encode()).hexdigest()[:40]}"


@dataclass(frozen=True, slots=True)
class OrgState:
    id: str
    version: int = 0
    settings: OrgMailSettings | None = None


@dataclass(frozen=True, slots=True)
class SetMailSettings:
    incoming: v.ServerSpec
    domains: Sequence[str] = ()
    outgoing: v.ServerSpec | None = None
    username_template: str = "%EMAILADDRESS%"
    auth_mode: AuthMode = "password"
    allow_insecure: bool = False
    polling_interval_s: int | None = None
    employee_self_service: SelfService = "org_domains"


def evolve(state: OrgState, event: Event) -> OrgState:
    s = replace(state, version=state.version + 1)
    if isinstance(event, OrgMailSettingsChanged):
        return replace(s, settings=event.settings)
    return s


def fold(aggregate_id: str, events: Iterable[Event]) -> OrgState:
    state = OrgState(aggregate_id)
    for e in events:
        state = evolve(state, e)
    return state


def decide(cmd: SetMailSettings, state: OrgState) -> list[Event]:
    settings = build(cmd)
    before = state.settings
    changed = [f for f in FIELDS if before is None or getattr(before, f) != getattr(settings, f)]
    if not changed:
        return []
    return [OrgMailSettingsChanged(changed=changed, settings=settings)]


def normalise_domain(value: str) -> str:
    host = value.strip().rstrip(".").lower().removeprefix("@")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        host = ""
    if (
        not host
        or len(host) > 253
        or "." not in host
        or not all(map(_LABEL.match, host.split(".")))
    ):
        raise v.Invalid(
            f"{value!r} is not a domain name", code="invalid_domain", details={"field": "domains"}
        )
    return host


def check_template(template: str) -> str:
    template = template.strip()
    unknown = set(_PLACEHOLDER.findall(template)) - PLACEHOLDERS
    if not template or len(template) > 320 or unknown:
        extra = f" (unknown: {sorted(unknown)})" if unknown else ""
        raise v.Invalid(
            "username_template must be a login name, optionally with %EMAILADDRESS%, "
            f"%EMAILLOCALPART% or %EMAILDOMAIN%{extra}",
            code="invalid_username_template",
            details={"field": "username_template"},
        )
    return template


def build(cmd: SetMailSettings) -> OrgMailSettings:
    domains = list(dict.fromkeys(normalise_domain(d) for d in cmd.domains))
    if not domains or len(domains) > MAX_DOMAINS:
        raise v.Invalid(
            f"name between 1 and {MAX_DOMAINS} domains of the organisation",
            code="invalid_domain",
            details={"field": "domains"},
        )
    protocol = cmd.incoming.protocol or ("ews" if cmd.incoming.url else None)
    if protocol is None or protocol not in KIND:
        raise v.Invalid(
            "incoming server: protocol must be imap, pop3 or ews",
            code="invalid_server",
            details={"field": "incoming"},
        )
    kind = KIND[protocol]
    incoming = v.resolve_server("incoming", cmd.incoming, kind, cmd.allow_insecure)
    outgoing: Server | None = None
    if cmd.outgoing is not None:
        outgoing = v.resolve_server("outgoing", cmd.outgoing, kind, cmd.allow_insecure)
    elif kind != "exchange":
        raise v.Invalid(
            "an IMAP or POP3 organisation needs its outgoing SMTP server",
            code="invalid_server",
            details={"field": "outgoing"},
        )
    v.check_polling(cmd.polling_interval_s)
    return OrgMailSettings(
        domains=domains,
        incoming=incoming,
        outgoing=outgoing,
        username_template=check_template(cmd.username_template),
        auth_mode=cmd.auth_mode,
        allow_insecure=cmd.allow_insecure,
        polling_interval_s=cmd.polling_interval_s,
        employee_self_service=cmd.employee_self_service,
    )


def domain_of(address: str) -> str:
    domain = address.rpartition("@")[2].strip().rstrip(".").lower()
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def covers(settings: OrgMailSettings | None, address: str) -> bool:
    return settings is not None and domain_of(address) in settings.domains


def username_for(template: str, address: str) -> str:
    local, _, domain = address.rpartition("@")
    return (
        template.replace("%EMAILADDRESS%", address)
        .replace("%EMAILLOCALPART%", local)
        .replace("%EMAILDOMAIN%", domain)
    )


def _spec(server: Server | None) -> v.ServerSpec | None:
    if server is None:
        return None
    return v.ServerSpec(server.host, server.port, server.security, server.protocol, server.url)


def fill(settings: OrgMailSettings, address: str) -> tuple[Protocol, dict[str, Any]]:
    """The protocol and account values the organisation's settings give ``address``."""
    values: dict[str, Any] = {
        "incoming": _spec(settings.incoming),
        "username": username_for(settings.username_template, address),
        "auth_mode": settings.auth_mode,
        "allow_insecure": settings.allow_insecure,
    }
    if settings.outgoing is not None:
        values["outgoing"] = _spec(settings.outgoing)
    if settings.polling_interval_s is not None:
        values["polling_interval_s"] = settings.polling_interval_s
    return KIND[settings.incoming.protocol], values


def require(state: OrgState) -> OrgMailSettings:
    if state.settings is None:
        raise NotFound(
            "the organisation's mail settings are not set (PUT /v1/org/mail-settings)",
            code="no_org_settings",
        )
    return state.settings
