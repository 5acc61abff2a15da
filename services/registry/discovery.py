"""Mail-server discovery for an email address.

Tried in order, stopping at the first hit:

1. ``preset_domain`` - the address domain belongs to a built-in preset;
2. ``mx`` - the domain's MX hosts match a preset's ``mx_patterns``;
3. ``srv`` - RFC 6186 SRV records (``_imaps._tcp`` ...);
4. ``autoconfig`` - Thunderbird autoconfig XML from configurable URLs.

Every network step has its own timeout; a failure is recorded as a step and
discovery moves on. The result lists every step tried, for display.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.resolver
import httpx
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict

from services.registry.presets import (
    AuthMode,
    IncomingServer,
    OutgoingServer,
    Preset,
    Security,
    ServerSettings,
    normalise_hostname,
    parse_autoconfig,
    preset_for_domain,
    preset_for_mx,
)

__all__ = [
    "DEFAULT_AUTOCONFIG_URLS",
    "ISPDB_URL",
    "DiscoveryMethod",
    "DiscoveryResult",
    "DiscoveryStep",
    "InvalidAddressError",
    "Resolver",
    "ServerSettings",
    "StepOutcome",
    "discover",
    "make_resolver",
    "normalise_address",
    "parse_autoconfig",
]

Resolver = dns.asyncresolver.Resolver
DiscoveryMethod = Literal["preset_domain", "mx", "srv", "autoconfig", "none"]
StepMethod = Literal["preset_domain", "mx", "srv", "autoconfig"]
StepOutcome = Literal["found", "not_found", "error", "timeout"]

#: Placeholders: ``{domain}``, ``{address}`` and ``{localpart}`` (URL-quoted).
ISPDB_URL = "https://autoconfig.thunderbird.net/v1.1/{domain}"
DEFAULT_AUTOCONFIG_URLS: tuple[str, ...] = (
    "https://autoconfig.{domain}/mail/config-v1.1.xml?emailaddress={address}",
    "https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml",
    ISPDB_URL,
)
MAX_AUTOCONFIG_BYTES = 256 * 1024

#: RFC 6186 services, most preferred first within each direction (RFC 8314: implicit TLS).
_SRV_SERVICES: tuple[tuple[str, Literal["imap", "pop3", "smtp"], Security], ...] = (
    ("_imaps._tcp", "imap", "ssl"),
    ("_imap._tcp", "imap", "starttls"),
    ("_pop3s._tcp", "pop3", "ssl"),
    ("_pop3._tcp", "pop3", "starttls"),
    ("_submissions._tcp", "smtp", "ssl"),
    ("_submission._tcp", "smtp", "starttls"),
)


class InvalidAddressError(ValueError):
    """The string given to :func:`discover` is not a usable email address."""


class DiscoveryStep(BaseModel):
    """One thing tried, for display: what, against which target, and how it went."""

    model_config = ConfigDict(frozen=True)

    method: StepMethod
    target: str
    outcome: StepOutcome
    detail: str = ""
    elapsed_ms: int = 0


class DiscoveryResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    address: str
    domain: str
    method: DiscoveryMethod
    preset_id: str | None = None
    incoming: IncomingServer | None = None
    #: POP3 alternative when ``incoming`` is IMAP.
    pop3: IncomingServer | None = None
    outgoing: OutgoingServer | None = None
    auth_modes: tuple[AuthMode, ...] = ()
    mx_hosts: tuple[str, ...] = ()
    steps: tuple[DiscoveryStep, ...] = ()

    @property
    def found(self) -> bool:
        return self.method != "none"


def make_resolver(
    nameserver: str | None = None, *, port: int = 53, timeout: float = 5.0
) -> Resolver:
    """An async resolver; the system configuration unless ``nameserver`` is given."""
    resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
    if nameserver is not None:
        resolver.nameservers = [nameserver]
        resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def normalise_address(address: str) -> tuple[str, str]:
    """``(normalised address, ASCII domain)`` or :class:`InvalidAddressError`."""
    if not isinstance(address, str) or not address.strip():
        raise InvalidAddressError("an email address is required")
    try:
        valid = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddressError(f"invalid email address {address!r}: {exc}") from None
    domain = valid.ascii_domain.lower()
    return f"{valid.local_part}@{domain}", domain


class _Steps:
    def __init__(self) -> None:
        self.items: list[DiscoveryStep] = []

    def add(
        self, method: StepMethod, target: str, outcome: StepOutcome, detail: str, start: float
    ) -> None:
        elapsed = int((time.monotonic() - start) * 1000)
        step = DiscoveryStep(
            method=method, target=target, outcome=outcome, detail=detail, elapsed_ms=elapsed
        )
        self.items.append(step)


async def _query(
    resolver: Resolver, name: str, rdtype: str, seconds: float
) -> tuple[list[Any], StepOutcome, str]:
    """Resolve one name; returns ``(records, outcome, detail)`` and never raises."""
    try:
        async with asyncio.timeout(seconds + 0.5):
            answer = await resolver.resolve(
                name, rdtype, lifetime=seconds, search=False, raise_on_no_answer=False
            )
    except dns.resolver.NXDOMAIN:
        return [], "not_found", "NXDOMAIN"
    except (TimeoutError, dns.exception.Timeout):
        return [], "timeout", f"no DNS answer within {seconds:g}s"
    except dns.resolver.NoNameservers as exc:
        return [], "error", f"no name server answered: {exc}"
    except dns.exception.DNSException as exc:
        return [], "error", f"{type(exc).__name__}: {exc}"
    if answer.rrset is None:
        return [], "not_found", f"no {rdtype} records"
    return list(answer.rrset), "found", ""


async def _mx_step(
    domain: str, resolver: Resolver, seconds: float, steps: _Steps
) -> tuple[list[str], Preset | None]:
    start = time.monotonic()
    records, outcome, detail = await _query(resolver, domain, "MX", seconds)
    ordered = sorted(records, key=lambda r: (int(r.preference), str(r.exchange).lower()))
    hosts = [normalise_hostname(str(r.exchange)) for r in ordered]
    hosts = [h for h in hosts if h]  # RFC 7505 null MX "." accepts no mail
    if outcome == "found" and not hosts:
        outcome, detail = "not_found", "null MX: the domain accepts no mail"
    preset = preset_for_mx(hosts) if hosts else None
    if preset is not None:
        detail = f"{', '.join(hosts)} -> preset {preset.id}"
    elif hosts:
        outcome, detail = "not_found", f"{', '.join(hosts)} match no preset"
    steps.add("mx", f"MX {domain}", outcome, detail, start)
    return hosts, preset


_SrvKey = tuple[int, int, int, str, int]


def _srv_key(record: Any, rank: int) -> _SrvKey:
    """Lowest priority first, then preferred service, then highest weight (RFC 2782/6186)."""
    host = normalise_hostname(str(record.target))
    return (int(record.priority), rank, -int(record.weight), host, int(record.port))


async def _srv_step(
    domain: str, resolver: Resolver, seconds: float, steps: _Steps
) -> ServerSettings | None:
    start = time.monotonic()
    answers = await asyncio.gather(
        *(_query(resolver, f"{name}.{domain}", "SRV", seconds) for name, _, _ in _SRV_SERVICES)
    )
    incoming: list[tuple[_SrvKey, IncomingServer]] = []
    outgoing: list[tuple[_SrvKey, OutgoingServer]] = []
    for rank, ((name, protocol, security), (records, outcome, detail)) in enumerate(
        zip(_SRV_SERVICES, answers, strict=True)
    ):
        # A target of "." means the service is decidedly not offered (RFC 2782).
        usable = [r for r in records if normalise_hostname(str(r.target)) and int(r.port) > 0]
        if outcome == "found" and not usable:
            outcome, detail = "not_found", 'target "." - service not offered'
        elif usable:
            detail = ", ".join(
                f"{normalise_hostname(str(r.target))}:{r.port} "
                f"(priority {r.priority}, weight {r.weight})"
                for r in usable
            )
        steps.add("srv", f"SRV {name}.{domain}", outcome, detail, start)
        for record in usable:
            key = _srv_key(record, rank)
            host, port = key[3], key[4]
            if protocol == "smtp":
                outgoing.append((key, OutgoingServer(host=host, port=port, security=security)))
            else:
                server = IncomingServer(protocol=protocol, host=host, port=port, security=security)
                incoming.append((key, server))
    if not incoming:
        return None
    incoming.sort(key=lambda item: item[0])
    outgoing.sort(key=lambda item: item[0])
    best = incoming[0][1]
    pops = [server for _, server in incoming if server.protocol == "pop3"]
    return ServerSettings(
        incoming=best,
        pop3=pops[0] if pops and best.protocol == "imap" else None,
        outgoing=outgoing[0][1] if outgoing else None,
        auth_modes=("password",),
    )


async def _fetch(
    http: httpx.AsyncClient, url: str, seconds: float
) -> tuple[bytes, StepOutcome, str]:
    """GET ``url``: ``(body, "found", "")`` on 200, else ``(b"", outcome, reason)``."""
    async with (
        asyncio.timeout(seconds),
        http.stream("GET", url, timeout=seconds, follow_redirects=True) as response,
    ):
        if response.status_code != httpx.codes.OK:
            return b"", "not_found", f"HTTP {response.status_code}"
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body.extend(chunk)
            if len(body) > MAX_AUTOCONFIG_BYTES:
                return b"", "error", f"document larger than {MAX_AUTOCONFIG_BYTES} bytes"
        return bytes(body), "found", ""


async def _autoconfig_step(
    address: str,
    domain: str,
    urls: Sequence[str],
    http: httpx.AsyncClient,
    seconds: float,
    steps: _Steps,
) -> ServerSettings | None:
    local = address.rpartition("@")[0]
    quoted = {
        "domain": urllib.parse.quote(domain, safe=""),
        "address": urllib.parse.quote(address, safe=""),
        "localpart": urllib.parse.quote(local, safe=""),
    }
    for template in urls:
        url = template.format(**quoted)
        start = time.monotonic()
        try:
            body, outcome, reason = await _fetch(http, url, seconds)
        except (TimeoutError, httpx.TimeoutException):
            steps.add("autoconfig", url, "timeout", f"no answer within {seconds:g}s", start)
            continue
        except httpx.HTTPError as exc:
            steps.add("autoconfig", url, "error", f"{type(exc).__name__}: {exc}", start)
            continue
        if outcome != "found":
            steps.add("autoconfig", url, outcome, reason, start)
            continue
        try:
            settings = parse_autoconfig(body, address)
        except ValueError as exc:
            steps.add("autoconfig", url, "error", str(exc), start)
            continue
        assert settings.incoming is not None
        detail = f"{settings.incoming.protocol} {settings.incoming.host}:{settings.incoming.port}"
        steps.add("autoconfig", url, "found", detail, start)
        return settings
    return None


async def discover(
    address: str,
    *,
    resolver: Resolver | None = None,
    http: httpx.AsyncClient | None = None,
    timeout: float = 5.0,
    autoconfig_urls: Sequence[str] = DEFAULT_AUTOCONFIG_URLS,
) -> DiscoveryResult:
    """Find the mail servers for ``address``; see the module docstring for the order.

    ``resolver`` defaults to the system resolver, ``http`` to a private client
    closed before returning. ``timeout`` (seconds) bounds each network step:
    the MX query, the SRV queries (run together) and each autoconfig URL.
    """
    address, domain = normalise_address(address)
    steps = _Steps()

    def result(
        method: DiscoveryMethod,
        found: ServerSettings | None = None,
        preset: Preset | None = None,
        mx_hosts: Sequence[str] = (),
    ) -> DiscoveryResult:
        found = found or ServerSettings()
        return DiscoveryResult(
            address=address,
            domain=domain,
            method=method,
            preset_id=preset.id if preset else None,
            incoming=found.incoming,
            pop3=found.pop3,
            outgoing=found.outgoing,
            auth_modes=found.auth_modes,
            mx_hosts=tuple(mx_hosts),
            steps=tuple(steps.items),
        )

    start = time.monotonic()
    preset = preset_for_domain(domain)
    if preset is not None:
        steps.add("preset_domain", domain, "found", f"preset {preset.id}", start)
        return result("preset_domain", preset.settings(), preset)
    steps.add("preset_domain", domain, "not_found", "no built-in preset for the domain", start)

    resolver = resolver if resolver is not None else make_resolver(timeout=timeout)
    mx_hosts, preset = await _mx_step(domain, resolver, timeout, steps)
    if preset is not None:
        return result("mx", preset.settings(), preset, mx_hosts)

    srv = await _srv_step(domain, resolver, timeout, steps)
    if srv is not None:
        return result("srv", srv, mx_hosts=mx_hosts)

    own_client = http is None
    client = http if http is not None else httpx.AsyncClient(timeout=timeout, max_redirects=5)
    try:
        settings = await _autoconfig_step(address, domain, autoconfig_urls, client, timeout, steps)
    finally:
        if own_client:
            await client.aclose()
    if settings is not None:
        return result("autoconfig", settings, mx_hosts=mx_hosts)
    return result("none", mx_hosts=mx_hosts)
