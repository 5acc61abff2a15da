"""The import's resolver (``handlers_import.ImportResolver``) against a real DNS server: the
rows of one import that name the same servers share one lookup, and a failed lookup is asked
again by the next row."""

from __future__ import annotations

import asyncio

import pytest

from services.registry.discovery import make_resolver
from services.registry.handlers_import import ImportResolver
from services.registry.netguard import ResolveError
from tests.support.dnsserver import LocalDNSServer, dns_server

pytestmark = pytest.mark.connected
__all__ = ["dns_server"]


async def test_one_lookup_per_host_for_many_rows(dns_server: LocalDNSServer) -> None:
    dns_server.set_records(
        {"imap.acme.example": ["A 192.0.2.10"], "smtp.acme.example": ["A 192.0.2.11"]}
    )
    resolver = ImportResolver(dns=make_resolver(dns_server.host, port=dns_server.port))
    hosts = ["imap.acme.example", "SMTP.acme.example", "smtp.acme.example"] * 50
    found = await asyncio.gather(*(resolver.addresses(h, 2.0) for h in hosts))
    assert found == [["192.0.2.10"], ["192.0.2.11"], ["192.0.2.11"]] * 50
    names = sorted({name.lower() for name, _ in dns_server.queries})
    assert names == ["imap.acme.example", "smtp.acme.example"]
    assert len(dns_server.queries) == 4  # A and AAAA, once per host
    assert await resolver.addresses("192.0.2.99", 2.0) == ["192.0.2.99"]


async def test_a_failed_lookup_is_not_remembered(dns_server: LocalDNSServer) -> None:
    resolver = ImportResolver(dns=make_resolver(dns_server.host, port=dns_server.port))
    with pytest.raises(ResolveError) as missing:
        await resolver.addresses("mail.acme.example", 2.0)
    assert missing.value.kind == "host_not_found"
    dns_server.set_records({"mail.acme.example": ["A 192.0.2.20"]})
    assert await resolver.addresses("mail.acme.example", 2.0) == ["192.0.2.20"]
