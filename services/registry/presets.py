"""Built-in mail provider presets: models and look-ups.

A preset describes how to reach one provider: incoming server (IMAP, POP3 or
EWS), an optional POP3 alternative, the SMTP submission server, the supported
authentication modes and hints for the person adding the account. The data
itself lives in :mod:`services.registry.presets_data`. :func:`parse_autoconfig`
reads the same settings from a Thunderbird autoconfig document.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "AuthMode",
    "IncomingProtocol",
    "IncomingServer",
    "OutgoingServer",
    "Preset",
    "PresetKind",
    "Security",
    "ServerEndpoint",
    "ServerSettings",
    "UnknownPresetError",
    "expand_placeholders",
    "get_preset",
    "list_presets",
    "mx_pattern_matches",
    "normalise_hostname",
    "parse_autoconfig",
    "preset_for_domain",
    "preset_for_mx",
]

Security = Literal["ssl", "starttls", "none"]
IncomingProtocol = Literal["imap", "pop3", "ews"]
PresetKind = Literal["imap", "pop3", "exchange", "office365", "gmail", "custom"]
AuthMode = Literal["password", "app_password", "oauth2"]

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*\Z")
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}\Z")
_HOST = re.compile(r"^(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9-]{1,63})*\Z")

#: Username placeholders understood in ``username`` templates (Thunderbird style).
EMAIL_ADDRESS = "%EMAILADDRESS%"
EMAIL_LOCALPART = "%EMAILLOCALPART%"
EMAIL_DOMAIN = "%EMAILDOMAIN%"


class UnknownPresetError(KeyError):
    """Raised by :func:`get_preset` for an id that names no preset."""

    def __init__(self, preset_id: str) -> None:
        super().__init__(preset_id)
        self.preset_id = preset_id

    def __str__(self) -> str:
        return f"unknown provider preset: {self.preset_id!r}"


def normalise_hostname(host: str) -> str:
    """Lower-case a host name and drop a trailing root dot."""
    return host.strip().rstrip(".").lower()


def expand_placeholders(template: str, address: str) -> str:
    """Replace ``%EMAILADDRESS%``, ``%EMAILLOCALPART%`` and ``%EMAILDOMAIN%``."""
    local, _, domain = address.rpartition("@")
    return (
        template.replace(EMAIL_ADDRESS, address)
        .replace(EMAIL_LOCALPART, local)
        .replace(EMAIL_DOMAIN, domain)
    )


class ServerEndpoint(BaseModel):
    """Host, port and transport security of one server."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    security: Security
    #: Login name template; placeholders are expanded by :meth:`username_for`.
    username: str = EMAIL_ADDRESS

    def username_for(self, address: str) -> str:
        return expand_placeholders(self.username, address)


class IncomingServer(ServerEndpoint):
    protocol: IncomingProtocol


class OutgoingServer(ServerEndpoint):
    protocol: Literal["smtp"] = "smtp"


class ServerSettings(BaseModel):
    """A complete set of servers, from a preset or found by discovery."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    incoming: IncomingServer | None = None
    #: POP3 alternative when ``incoming`` is IMAP.
    pop3: IncomingServer | None = None
    outgoing: OutgoingServer | None = None
    auth_modes: tuple[AuthMode, ...] = ()
    display_name: str | None = None


class Preset(BaseModel):
    """One provider's connection settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1)
    kind: PresetKind
    #: Address domains the provider serves (``gmail.com``, ``googlemail.com``).
    domains: tuple[str, ...] = ()
    #: Primary incoming server; ``None`` only when the user must supply it (Exchange).
    incoming: IncomingServer | None
    #: POP3 alternative when the primary incoming server is IMAP.
    pop3: IncomingServer | None = None
    outgoing: OutgoingServer | None
    auth_modes: tuple[AuthMode, ...]
    hints: tuple[str, ...] = ()
    #: MX host names or suffixes that identify the provider (label-boundary match).
    mx_patterns: tuple[str, ...] = ()
    #: Exchange Web Services endpoint, when fixed for the provider.
    ews_url: str | None = None
    #: The user has to type the EWS URL (on-premises Exchange).
    requires_ews_url: bool = False
    initials: str = Field(min_length=1, max_length=3)
    colour: str

    @model_validator(mode="after")
    def _check(self) -> Preset:
        if not _SLUG.match(self.id):
            raise ValueError(f"preset id {self.id!r} is not a slug")
        if not _COLOUR.match(self.colour):
            raise ValueError(f"colour {self.colour!r} is not #rrggbb")
        if not self.auth_modes:
            raise ValueError("a preset supports at least one auth mode")
        if self.incoming is None and not self.requires_ews_url:
            raise ValueError("incoming may be omitted only when the EWS URL is user supplied")
        if self.pop3 is not None and self.pop3.protocol != "pop3":
            raise ValueError("the pop3 alternative must use protocol pop3")
        for domain in self.domains:
            if domain != normalise_hostname(domain) or not _HOST.match(domain):
                raise ValueError(f"domain {domain!r} must be a lower-case host name")
        for pattern in self.mx_patterns:
            bare = pattern.removeprefix(".")
            if bare != normalise_hostname(bare) or not _HOST.match(bare):
                raise ValueError(f"mx pattern {pattern!r} must be a lower-case host name")
        return self

    def settings(self) -> ServerSettings:
        return ServerSettings(
            incoming=self.incoming,
            pop3=self.pop3,
            outgoing=self.outgoing,
            auth_modes=self.auth_modes,
            display_name=self.name,
        )


def mx_pattern_matches(pattern: str, mx_host: str) -> bool:
    """True when ``mx_host`` equals the pattern or is below it (label boundary).

    ``".google.com"`` and ``"google.com"`` both match ``aspmx.l.google.com``;
    neither matches ``notgoogle.com``.
    """
    bare = pattern.removeprefix(".").lower()
    host = normalise_hostname(mx_host)
    return host == bare or host.endswith("." + bare)


@cache
def _presets() -> tuple[Preset, ...]:
    from services.registry.presets_data import PRESETS

    ids = [p.id for p in PRESETS]
    if len(ids) != len(set(ids)):
        raise RuntimeError("duplicate preset ids")
    return PRESETS


@cache
def _by_id() -> dict[str, Preset]:
    return {p.id: p for p in _presets()}


@cache
def _by_domain() -> dict[str, Preset]:
    index: dict[str, Preset] = {}
    for preset in _presets():
        for domain in preset.domains:
            if domain in index:
                raise RuntimeError(f"domain {domain} claimed by {index[domain].id} and {preset.id}")
            index[domain] = preset
    return index


def list_presets() -> list[Preset]:
    """All built-in presets, in display order."""
    return list(_presets())


def get_preset(preset_id: str) -> Preset:
    try:
        return _by_id()[preset_id]
    except KeyError:
        raise UnknownPresetError(preset_id) from None


def preset_for_domain(domain: str) -> Preset | None:
    """The preset serving addresses ``user@domain``; accepts a whole address too."""
    host = normalise_hostname(domain.rpartition("@")[2])
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return _by_domain().get(host)


def preset_for_mx(mx_hosts: list[str]) -> Preset | None:
    """The preset whose ``mx_patterns`` match the MX hosts.

    ``mx_hosts`` should be ordered by MX preference (best first). The first
    host that matches any pattern decides; among patterns matching that host
    the longest (most specific) wins, so ``mxbiz1.qq.com`` picks Tencent
    Enterprise Mail rather than personal QQ Mail.
    """
    for host in mx_hosts:
        best: tuple[int, Preset] | None = None
        for preset in _presets():
            for pattern in preset.mx_patterns:
                if mx_pattern_matches(pattern, host):
                    length = len(pattern.removeprefix("."))
                    if best is None or length > best[0]:
                        best = (length, preset)
        if best is not None:
            return best[1]
    return None


# --- Thunderbird autoconfig (clientConfig v1.1), the de-facto preset exchange format ---

_SOCKET_TYPES: dict[str, Security] = {"ssl": "ssl", "starttls": "starttls", "plain": "none"}
_AUTH_METHODS: dict[str, AuthMode] = {
    "password-cleartext": "password",
    "plain": "password",
    "password-encrypted": "password",
    "secure": "password",
    "oauth2": "oauth2",
}
_AC_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")


def _text(element: Element, tag: str) -> str:
    child = element.find(tag)
    return (child.text or "").strip() if child is not None else ""


def _server(element: Element, address: str | None) -> tuple[str, dict[str, Any]] | None:
    kind = (element.get("type") or "").strip().lower()
    host = _text(element, "hostname")
    if address:
        host = expand_placeholders(host, address)
    security = _SOCKET_TYPES.get(_text(element, "socketType").lower())
    port = _text(element, "port")
    if not _AC_HOST.match(host) or security is None or not port.isdigit():
        return None
    fields: dict[str, Any] = {"host": host.lower(), "port": int(port), "security": security}
    username = _text(element, "username")
    if username:
        fields["username"] = username
    return kind, fields


def parse_autoconfig(document: bytes | str, address: str | None = None) -> ServerSettings:
    """Read a Thunderbird ``clientConfig`` (v1.1) document.

    The first IMAP server (else POP3) becomes ``incoming``, the first POP3 the
    ``pop3`` alternative and the first SMTP server ``outgoing``. Usernames keep
    their ``%EMAILADDRESS%``/``%EMAILLOCALPART%`` placeholders; host names have
    them expanded when ``address`` is given. DTDs and entities are refused.
    Raises ``ValueError`` for a document that is not a usable autoconfig.
    """
    try:
        root = safe_fromstring(document, forbid_dtd=True)
    except (ParseError, DefusedXmlException) as exc:
        raise ValueError(f"not a valid autoconfig document: {exc}") from None
    if root.tag != "clientConfig":
        raise ValueError(f"unexpected root element <{root.tag}>")
    provider = root.find("emailProvider")
    if provider is None:
        raise ValueError("no <emailProvider> element")
    found: dict[str, Any] = {"display_name": _text(provider, "displayName") or None}
    auth: list[AuthMode] = []
    try:
        for element in provider.findall("incomingServer") + provider.findall("outgoingServer"):
            parsed = _server(element, address)
            if parsed is None:
                continue
            kind, fields = parsed
            if kind == "imap" and "imap" not in found:
                found["imap"] = IncomingServer(protocol="imap", **fields)
            elif kind == "pop3" and "pop3" not in found:
                found["pop3"] = IncomingServer(protocol="pop3", **fields)
            elif kind == "smtp" and element.tag == "outgoingServer" and "outgoing" not in found:
                found["outgoing"] = OutgoingServer(**fields)
            else:
                continue
            for method in element.findall("authentication"):
                mode = _AUTH_METHODS.get((method.text or "").strip().lower())
                if mode is not None and mode not in auth:
                    auth.append(mode)
    except ValidationError as exc:
        raise ValueError(f"invalid server in autoconfig: {exc}") from None
    incoming = found.get("imap") or found.get("pop3")
    if incoming is None:
        raise ValueError("no usable IMAP or POP3 server")
    pop3 = found.get("pop3") if incoming.protocol == "imap" else None
    return ServerSettings(
        incoming=incoming,
        pop3=pop3,
        outgoing=found.get("outgoing"),
        auth_modes=tuple(auth) or ("password",),
        display_name=found["display_name"],
    )
