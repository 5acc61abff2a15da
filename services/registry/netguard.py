"""Where the registry may connect to: host resolution and the SSRF guard.

Discovery (autoconfig over HTTP) and connection tests reach hosts named by callers. Both first
resolve the name here, then refuse addresses that are not public (loopback, link-local such as
cloud metadata at 169.254.169.254, private networks, ...) unless a setting allows them, and
finally connect to the *checked* address (no second lookup that DNS rebinding could change).

Resolution uses the system resolver (``getaddrinfo``: /etc/hosts, search domains) unless
``MAILROOM_REGISTRY_DNS_SERVER`` names a server to ask instead (tests use a local one).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dns.exception
import dns.resolver
import httpx

from services.registry.discovery import DiscoveryResult, Resolver, discover, make_resolver

#: What a caller may reach: only public addresses, also private networks (an admin testing the
#: organisation's internal mail server), or anything (MAILROOM_REGISTRY_ALLOW_PRIVATE_TARGETS).
Reach = Literal["public", "private_networks", "any"]


class ResolveError(Exception):
    """A host name did not resolve; ``kind`` is ``host_not_found``, ``timeout`` or ``error``."""

    def __init__(self, kind: Literal["host_not_found", "timeout", "error"], message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class TargetRefused(Exception):
    """The address is not one this caller may reach (SSRF guard)."""

    def __init__(self, host: str, address: str, why: str) -> None:
        super().__init__(
            f"{host} resolves to {address}, a {why} address: refused (connections to "
            "non-public addresses need MAILROOM_REGISTRY_ALLOW_PRIVATE_TARGETS=true)"
        )
        self.host = host
        self.address = address
        self.why = why


def non_public(address: str) -> str | None:
    """Why ``address`` is not a public unicast address, or None if it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks = (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "non-public"),
    )
    return next((why for hit, why in checks if hit), None)


def check_address(host: str, address: str, reach: Reach) -> None:
    """Raise :class:`TargetRefused` unless ``reach`` allows ``address``."""
    if reach == "any":
        return
    why = non_public(address)
    if why is None or (reach == "private_networks" and why == "private"):
        return
    raise TargetRefused(host, address, why)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass
class HostResolver:
    """Host name -> addresses, by the system resolver or a configured DNS server."""

    dns: Resolver | None = None

    @classmethod
    def from_setting(cls, server: str | None, timeout: float = 5.0) -> HostResolver:
        if not server:
            return cls()
        host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
        return cls(make_resolver(host or server, port=int(port or 53), timeout=timeout))

    async def addresses(self, host: str, timeout: float) -> list[str]:
        host = host.strip("[]")
        if is_ip(host):
            return [host]
        try:
            async with asyncio.timeout(timeout):
                found = await (self._dns(host, timeout) if self.dns else self._system(host))
        except TimeoutError:
            raise ResolveError("timeout", f"no DNS answer for {host} within {timeout:g}s") from None
        if not found:
            raise ResolveError("host_not_found", f"{host} has no address records")
        return found

    async def _system(self, host: str) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (UnicodeError, ValueError):
            raise ResolveError("host_not_found", f"{host!r} is not a usable host name") from None
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                raise ResolveError("host_not_found", f"{host} does not exist in DNS") from None
            if exc.errno == socket.EAI_AGAIN:
                raise ResolveError("timeout", f"DNS lookup of {host} failed for now") from None
            raise ResolveError("error", f"DNS lookup of {host} failed: {exc}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _dns(self, host: str, timeout: float) -> list[str]:
        assert self.dns is not None
        results = await asyncio.gather(
            *(self._query(host, rdtype, timeout) for rdtype in ("A", "AAAA")),
            return_exceptions=True,
        )
        found: list[str] = []
        nxdomain = 0
        for res in results:
            if isinstance(res, dns.resolver.NXDOMAIN):
                nxdomain += 1
            elif isinstance(res, dns.exception.Timeout):
                raise ResolveError("timeout", f"no DNS answer for {host} within {timeout:g}s")
            elif isinstance(res, BaseException):
                raise ResolveError("error", f"DNS lookup of {host} failed: {res}")
            else:
                found += res
        if nxdomain and not found:
            raise ResolveError("host_not_found", f"{host} does not exist in DNS (NXDOMAIN)")
        return found

    async def _query(self, host: str, rdtype: str, timeout: float) -> list[str]:
        assert self.dns is not None
        answer = await self.dns.resolve(
            host, rdtype, lifetime=timeout, search=False, raise_on_no_answer=False
        )
        return [str(r) for r in answer.rrset] if answer.rrset is not None else []


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that resolves each request's host itself, refuses addresses
    ``reach`` does not allow, and connects to the checked address (TLS still verifies the
    original host name through SNI). Every redirect hop passes through here again."""

    def __init__(self, resolver: HostResolver, reach: Reach, timeout: float) -> None:
        self.resolver = resolver
        self.reach = reach
        self.timeout = timeout
        self.inner = httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        try:
            addresses = await self.resolver.addresses(host, self.timeout)
        except ResolveError as exc:
            raise httpx.ConnectError(exc.message, request=request) from None
        except (TimeoutError, OSError, ValueError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from None
        try:
            for address in addresses:
                check_address(host, address, self.reach)
        except TargetRefused as exc:
            raise httpx.ConnectError(str(exc), request=request) from None
        if not is_ip(host):
            request.url = request.url.copy_with(host=addresses[0])
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def guarded_client(resolver: HostResolver, reach: Reach, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=GuardedTransport(resolver, reach, timeout),
        timeout=timeout,
        max_redirects=5,
        headers={"User-Agent": "Mailroom-discovery/1"},
    )


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifying client context: the system trust store, plus ``ca_file`` when configured."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


@dataclass
class Network:
    """Everything the registry needs to reach out: resolver, SSRF policy, TLS trust, timeouts."""

    resolver: HostResolver
    discovery_dns: Resolver
    tls: ssl.SSLContext
    autoconfig_urls: tuple[str, ...]
    discovery_timeout: float = 5.0
    connect_timeout: float = 10.0
    allow_private: bool = False

    @classmethod
    def create(
        cls,
        *,
        dns_server: str | None,
        ca_file: Path | None,
        autoconfig_urls: Sequence[str],
        discovery_timeout: float,
        connect_timeout: float,
        allow_private: bool,
    ) -> Network:
        resolver = HostResolver.from_setting(dns_server, discovery_timeout)
        return cls(
            resolver=resolver,
            discovery_dns=resolver.dns or make_resolver(timeout=discovery_timeout),
            tls=tls_context(ca_file),
            autoconfig_urls=tuple(autoconfig_urls),
            discovery_timeout=discovery_timeout,
            connect_timeout=connect_timeout,
            allow_private=allow_private,
        )

    def reach(self, admin: bool) -> Reach:
        """Admins may reach the organisation's private networks (an internal mail server);
        loopback and link-local (cloud metadata) only when the setting allows them."""
        if self.allow_private:
            return "any"
        return "private_networks" if admin else "public"

    async def discover(self, address: str) -> DiscoveryResult:
        reach: Reach = "any" if self.allow_private else "public"
        async with guarded_client(self.resolver, reach, self.discovery_timeout) as http:
            return await discover(
                address,
                resolver=self.discovery_dns,
                http=http,
                timeout=self.discovery_timeout,
                autoconfig_urls=self.autoconfig_urls,
            )
