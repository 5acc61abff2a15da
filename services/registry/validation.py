"""Pure validation of account settings: addresses, servers, presets. No I/O (no DNS).

Every failure is a :class:`Invalid` (HTTP 422) with a machine-readable code, so an API caller
always gets a clear 4xx and the command writes nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from libs.common.errors import MailroomError
from libs.common.events.registry import AccountSettings, AuthMode, Protocol, Security, Server
from services.registry.presets import Preset, UnknownPresetError, get_preset

ServerProtocol = Literal["imap", "pop3", "smtp", "ews"]
Slot = Literal["incoming", "outgoing", "custom_smtp"]

MAX_FORWARDS = 20
MAX_BCC = 20
MIN_POLL_S = 30
MAX_POLL_S = 86_400

# Well-known ports: implicit TLS (security must be ssl) and plain/STARTTLS (never ssl).
IMPLICIT_TLS_PORTS: dict[int, ServerProtocol] = {993: "imap", 995: "pop3", 465: "smtp"}
PLAIN_PORTS: dict[int, ServerProtocol] = {143: "imap", 110: "pop3", 587: "smtp", 25: "smtp"}

INCOMING: dict[Protocol, frozenset[ServerProtocol]] = {
    "imap": frozenset({"imap"}),
    "pop3": frozenset({"pop3"}),
    "exchange": frozenset({"ews"}),
    "office365": frozenset({"imap", "pop3", "ews"}),
    "gmail": frozenset({"imap", "pop3"}),
    "custom": frozenset({"imap", "pop3", "ews"}),
}
OUTGOING: dict[Protocol, frozenset[ServerProtocol]] = {
    "imap": frozenset({"smtp"}),
    "pop3": frozenset({"smtp"}),
    "exchange": frozenset({"ews", "smtp"}),
    "office365": frozenset({"smtp", "ews"}),
    "gmail": frozenset({"smtp"}),
    "custom": frozenset({"smtp", "ews"}),
}
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\Z")


class Invalid(MailroomError):
    """A command's input cannot be accepted (422)."""

    status = 422
    code = "invalid"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server as a caller gives it; ``protocol`` may be left to inference."""

    host: str | None = None
    port: int | None = None
    security: Security | None = None
    protocol: ServerProtocol | None = None
    url: str | None = None


_DOT_ATOM = re.compile(r"^[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*\Z")


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> str:
    """The normalised domain, checked once per domain by the full validator."""
    return validate_email(f"x@{domain}", check_deliverability=False).domain


def _fast(value: str) -> str | None:
    """Plain ASCII ``dot.atom@domain``: email-validator's normal form is the local part as is
    and the domain lower-cased, so only the domain needs its (costly) full check, once."""
    local, at, domain = value.partition("@")
    if not at or len(value) > 254 or len(local) > 64 or not _DOT_ATOM.match(local):
        return None
    if local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:  # postmaster, abuse...: lower-cased
        return None
    if not domain.isascii() or domain.lower() != domain or "@" in domain:
        return None
    try:
        return f"{local}@{_domain(domain)}"
    except EmailNotValidError:
        return None


def normalise_address(value: str, *, what: str = "address") -> str:
    """Syntax check (RFC 5321/5322 via email-validator, no DNS); returns the normalised form."""
    fast = _fast(value)
    if fast is not None:
        return fast
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise Invalid(
            f"{what} {value!r} is not a valid email address: {exc}",
            code="invalid_address",
            details={"field": what},
        ) from None


def address_key(address: str) -> str:
    """Case-insensitive identity of an address (duplicates per tenant)."""
    return address.strip().lower()


def normalise_addresses(values: Iterable[str], *, what: str, limit: int, code: str) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for v in values:
        a = normalise_address(v, what=what)
        if address_key(a) not in seen:
            seen.add(address_key(a))
            out.append(a)
    if len(out) > limit:
        raise Invalid(
            f"at most {limit} {what} addresses are allowed, got {len(out)}",
            code=code,
            details={"field": what, "limit": limit},
        )
    return out


def load_preset(preset_id: str) -> Preset:
    try:
        return get_preset(preset_id)
    except UnknownPresetError:
        raise Invalid(
            f"unknown provider preset {preset_id!r}",
            code="unknown_preset",
            details={"field": "preset_id"},
        ) from None


def _bad_server(slot: str, message: str) -> Invalid:
    return Invalid(f"{slot} server: {message}", code="invalid_server", details={"field": slot})


@functools.lru_cache(maxsize=4096)
def _check_host(slot: str, host: str) -> str:
    host = host.strip().rstrip(".")
    if not host or len(host) > 253:
        raise _bad_server(slot, "host is empty or too long")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host
    except ValueError:
        pass
    if not all(_LABEL.match(label) for label in host.split(".")):
        raise _bad_server(slot, f"host {host!r} is not a host name or IP address")
    return host.lower()


def _infer_protocol(slot: Slot, spec: ServerSpec, kind: Protocol) -> ServerProtocol:
    if spec.protocol is not None:
        return spec.protocol
    if spec.url is not None:
        return "ews"
    if slot != "incoming":
        return "ews" if kind == "exchange" else "smtp"
    if kind in ("imap", "pop3"):
        return kind
    if kind == "exchange":
        return "ews"
    if kind in ("gmail", "office365"):
        return "imap"
    port_proto = IMPLICIT_TLS_PORTS.get(spec.port or 0) or PLAIN_PORTS.get(spec.port or 0)
    if port_proto in ("imap", "pop3"):
        return port_proto
    raise _bad_server(slot, "protocol (imap, pop3 or ews) is needed for a custom account")


def resolve_server(slot: Slot, spec: ServerSpec, kind: Protocol, allow_insecure: bool) -> Server:
    """Turn a caller's server into a checked :class:`Server`, or raise ``invalid_server``."""
    protocol = _infer_protocol(slot, spec, kind)
    allowed = INCOMING[kind] if slot == "incoming" else OUTGOING[kind]
    if slot == "custom_smtp":
        allowed = frozenset({"smtp"})
    if protocol not in allowed:
        raise _bad_server(
            slot,
            f"{protocol} is not possible for a {kind} account "
            f"(allowed: {', '.join(sorted(allowed))})",
        )
    url = spec.url
    host, port, security = spec.host, spec.port, spec.security
    if protocol == "ews":
        if not url:
            raise _bad_server(slot, "an EWS server needs its url (https://.../EWS/Exchange.asmx)")
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise _bad_server(slot, f"EWS url {url!r} is not an http(s) URL")
        if parts.scheme == "http" and not allow_insecure:
            raise Invalid(
                f"{slot} server: a plain http EWS url needs allow_insecure: true",
                code="insecure_not_allowed",
                details={"field": slot},
            )
        host = host or parts.hostname
        port = port or parts.port or (443 if parts.scheme == "https" else 80)
        security = security or ("ssl" if parts.scheme == "https" else "none")
    elif url is not None:
        raise _bad_server(slot, "url is only for EWS servers")
    if host is None or port is None or security is None:
        raise _bad_server(slot, "host, port and security are required")
    if not 1 <= port <= 65535:
        raise _bad_server(slot, f"port {port} is out of range")
    if security == "none" and not allow_insecure:
        raise Invalid(
            f"{slot} server: security 'none' sends the password in clear text; "
            "set allow_insecure: true to accept that",
            code="insecure_not_allowed",
            details={"field": slot},
        )
    implicit = IMPLICIT_TLS_PORTS.get(port)
    plain = PLAIN_PORTS.get(port)
    owner = implicit or plain
    if owner is not None and owner != protocol:
        raise _bad_server(slot, f"port {port} belongs to {owner}, not {protocol}")
    if implicit is not None and security != "ssl":
        raise _bad_server(
            slot, f"port {port} is implicit TLS: security must be ssl, not {security}"
        )
    if plain is not None and security == "ssl":
        raise _bad_server(
            slot,
            f"port {port} speaks plain {protocol} first: use starttls "
            "(or the implicit-TLS port with ssl)",
        )
    return Server(
        protocol=protocol, host=_check_host(slot, host), port=port, security=security, url=url
    )


def check_polling(value: int | None) -> None:
    if value is not None and not MIN_POLL_S <= value <= MAX_POLL_S:
        raise Invalid(
            f"polling_interval_s must be between {MIN_POLL_S} and {MAX_POLL_S}",
            code="invalid_polling_interval",
            details={"field": "polling_interval_s"},
        )


def check_auth_mode(mode: AuthMode, preset: Preset | None) -> None:
    if preset is not None and mode not in preset.auth_modes:
        raise Invalid(
            f"preset {preset.id!r} supports {', '.join(preset.auth_modes)}, not {mode}",
            code="unsupported_auth_mode",
            details={"field": "auth_mode"},
        )


def preset_servers(
    preset: Preset, kind: Protocol, address: str
) -> tuple[ServerSpec | None, ServerSpec | None, str | None]:
    """Incoming, outgoing and the username a preset suggests for ``kind``."""
    incoming = preset.pop3 if kind == "pop3" and preset.pop3 is not None else preset.incoming
    if kind == "pop3" and incoming is not None and incoming.protocol != "pop3":
        incoming = None
    inc: ServerSpec | None = None
    username: str | None = None
    if kind == "exchange" and preset.ews_url:
        inc = ServerSpec(protocol="ews", url=preset.ews_url)
    elif incoming is not None:
        inc = ServerSpec(incoming.host, incoming.port, incoming.security, incoming.protocol)
        username = incoming.username_for(address)
    out = preset.outgoing
    outgoing = ServerSpec(out.host, out.port, out.security, "smtp") if out is not None else None
    return inc, outgoing, username


def build_settings(
    protocol: Protocol, values: Mapping[str, Any], preset: Preset | None
) -> AccountSettings:
    """Validate everything and return the settings an event carries."""
    insecure = bool(values.get("allow_insecure", False))
    servers: dict[str, Server | None] = {}
    for slot in ("incoming", "outgoing", "custom_smtp"):
        spec = values.get(slot)
        servers[slot] = resolve_server(slot, spec, protocol, insecure) if spec else None
    if servers["incoming"] is None:
        raise Invalid(
            f"a {protocol} account needs an incoming server (or a preset)",
            code="invalid_server",
            details={"field": "incoming"},
        )
    if protocol == "exchange" and servers["outgoing"] is None:
        servers["outgoing"] = servers["incoming"]  # EWS sends through the same endpoint
    if protocol in ("imap", "pop3") and servers["outgoing"] is None:
        raise Invalid(
            f"a {protocol} account needs an outgoing SMTP server",
            code="invalid_server",
            details={"field": "outgoing"},
        )
    auth_mode: AuthMode = values.get("auth_mode") or "password"
    check_auth_mode(auth_mode, preset)
    check_polling(values.get("polling_interval_s"))
    send_as = values.get("send_as_address")
    limit = values.get("daily_send_limit")
    if limit is not None and limit < 1:
        raise Invalid(
            "daily_send_limit must be at least 1",
            code="invalid_send_limit",
            details={"field": "daily_send_limit"},
        )
    folders = [f for f in (values.get("folders") or ["INBOX"]) if f.strip()] or ["INBOX"]
    return AccountSettings(
        display_name=(values.get("display_name") or "").strip(),
        incoming=servers["incoming"],
        outgoing=servers["outgoing"],
        custom_smtp=servers["custom_smtp"],
        allow_insecure=insecure,
        auth_mode=auth_mode,
        username=(values.get("username") or "").strip(),
        polling_interval_s=values.get("polling_interval_s"),
        leave_on_server=bool(values.get("leave_on_server", True)),
        send_as_name=values.get("send_as_name"),
        send_as_address=normalise_address(send_as, what="send_as_address") if send_as else None,
        auto_bcc=normalise_addresses(
            values.get("auto_bcc") or [], what="auto_bcc", limit=MAX_BCC, code="too_many_bcc"
        ),
        daily_send_limit=limit,
        forwarding=normalise_addresses(
            values.get("forwarding") or [],
            what="forwarding",
            limit=MAX_FORWARDS,
            code="too_many_forwards",
        ),
        folders=folders,
    )


def check_cross(address: str, settings: AccountSettings) -> None:
    if address_key(address) in {address_key(a) for a in settings.forwarding}:
        raise Invalid(
            "an account cannot forward to itself",
            code="forwarding_loop",
            details={"field": "forwarding"},
        )
    if not settings.username:
        raise Invalid(
            "username must not be empty", code="invalid_username", details={"field": "username"}
        )
