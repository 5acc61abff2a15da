"""Discovery against a local DNS server (dnslib) and a local HTTP server."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.asyncquery as dns_query
import dns.flags as dns_flags
import dns.message as dns_message
import dns.rcode as dns_rcode
import httpx
import pytest

from services.registry.discovery import (
    DiscoveryResult,
    InvalidAddressError,
    Resolver,
    discover,
    make_resolver,
)
from tests.support.dnsserver import LocalDNSServer, SilentDNSServer

pytestmark = pytest.mark.connected

DOMAIN = "acme.example"
ADDRESS = f"Jane.Doe@{DOMAIN}"

AUTOCONFIG_XML = """<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1">
  <emailProvider id="acme.example">
    <domain>acme.example</domain>
    <displayName>Acme Mail</displayName>
    <incomingServer type="pop3">
      <hostname>pop.%EMAILDOMAIN%</hostname>
      <port>995</port>
      <socketType>SSL</socketType>
      <username>%EMAILLOCALPART%</username>
      <authentication>password-cleartext</authentication>
    </incomingServer>
    <incomingServer type="imap">
      <hostname>imap.%EMAILDOMAIN%</hostname>
      <port>143</port>
      <socketType>STARTTLS</socketType>
      <username>%EMAILLOCALPART%</username>
      <authentication>password-cleartext</authentication>
      <authentication>OAuth2</authentication>
    </incomingServer>
    <outgoingServer type="smtp">
      <hostname>smtp.acme.example</hostname>
      <port>25</port>
      <socketType>plain</socketType>
      <username>%EMAILADDRESS%</username>
      <authentication>password-cleartext</authentication>
    </outgoingServer>
  </emailProvider>
</clientConfig>
"""


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        path = self.path.split("?", 1)[0]
        status, body, delay = self.server.routes.get(path, (404, b"not found", 0.0))
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout test)
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[int, bytes, float]] = {}
        self.requests: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def autoconfig_urls(self) -> tuple[str, ...]:
        """The two standard locations, served from this server, domain in the path."""
        return (
            self.base + "/autoconfig/{domain}/mail/config-v1.1.xml?emailaddress={address}",
            self.base + "/{domain}/.well-known/autoconfig/mail/config-v1.1.xml",
        )


@pytest.fixture
def dns() -> Iterator[LocalDNSServer]:
    with LocalDNSServer() as server:
        yield server


@pytest.fixture
def resolver(dns: LocalDNSServer) -> Resolver:
    return make_resolver(dns.host, port=dns.port, timeout=2.0)


@pytest.fixture
def web() -> Iterator[_HTTPServer]:
    server = _HTTPServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


async def run(
    resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer, address: str = ADDRESS
) -> DiscoveryResult:
    return await discover(
        address, resolver=resolver, http=http, timeout=2.0, autoconfig_urls=web.autoconfig_urls()
    )


def outcomes(result: DiscoveryResult) -> list[tuple[str, str]]:
    return [(step.method, step.outcome) for step in result.steps]


async def test_known_domain_uses_preset_without_network(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    result = await run(resolver, http, web, "someone@GoogleMail.com")
    assert result.method == "preset_domain"
    assert result.preset_id == "gmail"
    assert result.incoming is not None and result.incoming.host == "imap.gmail.com"
    assert outcomes(result) == [("preset_domain", "found")]
    assert dns.queries == [] and web.requests == []


@pytest.mark.parametrize(
    ("mx_records", "preset_id", "incoming_host"),
    [
        (["10 aspmx.l.google.com.", "20 alt1.aspmx.l.google.com."], "gmail", "imap.gmail.com"),
        (["0 acme-example.mail.protection.outlook.com."], "office365", "outlook.office365.com"),
        (["5 mxbiz1.qq.com.", "10 mxbiz2.qq.com."], "tencent-exmail", "imap.exmail.qq.com"),
        (["5 mxhz.qiye.aliyun.com.", "10 mxw.qiye.aliyun.com."], "aliyun-enterprise",
         "imap.qiye.aliyun.com"),
        (["10 mx1.qq.com."], "qq", "imap.qq.com"),
        (["10 mx.yandex.net."], "yandex", "imap.yandex.com"),
    ],
)  # fmt: skip
async def test_mx_matches_preset(
    dns: LocalDNSServer,
    resolver: Resolver,
    http: httpx.AsyncClient,
    web: _HTTPServer,
    mx_records: list[str],
    preset_id: str,
    incoming_host: str,
) -> None:
    dns.set_records({DOMAIN: [f"MX {mx}" for mx in mx_records]})
    result = await run(resolver, http, web)
    assert result.method == "mx"
    assert result.preset_id == preset_id
    assert result.incoming is not None and result.incoming.host == incoming_host
    assert result.mx_hosts[0] == mx_records[0].split()[1].rstrip(".")
    assert outcomes(result) == [("preset_domain", "not_found"), ("mx", "found")]
    assert web.requests == []


async def test_mx_order_follows_preference(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    # The unknown host has the better preference, so the preset is found via the second MX.
    dns.set_records({DOMAIN: ["MX 20 mxbiz2.qq.com.", "MX 10 filter.acme.example."]})
    result = await run(resolver, http, web)
    assert result.mx_hosts == ("filter.acme.example", "mxbiz2.qq.com")
    assert result.preset_id == "tencent-exmail"


async def test_srv_records(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    dns.set_records(
        {
            DOMAIN: ["MX 10 mx.acme.example."],
            f"_imaps._tcp.{DOMAIN}": [
                "SRV 10 10 993 imap-b.acme.example.",
                "SRV 10 60 993 imap-a.acme.example.",
                "SRV 20 100 993 imap-backup.acme.example.",
            ],
            f"_imap._tcp.{DOMAIN}": ["SRV 10 0 143 imap-a.acme.example."],
            f"_pop3s._tcp.{DOMAIN}": ["SRV 30 0 995 pop.acme.example."],
            f"_submissions._tcp.{DOMAIN}": ["SRV 5 0 465 smtp-tls.acme.example."],
            f"_submission._tcp.{DOMAIN}": ["SRV 0 0 587 smtp.acme.example."],
        }
    )
    result = await run(resolver, http, web)
    assert result.method == "srv"
    assert result.preset_id is None
    assert result.incoming is not None and result.outgoing is not None and result.pop3 is not None
    # Same priority: implicit TLS beats STARTTLS, then the higher weight wins.
    assert (result.incoming.protocol, result.incoming.host) == ("imap", "imap-a.acme.example")
    assert (result.incoming.port, result.incoming.security) == (993, "ssl")
    # Lower priority value wins across services.
    assert (result.outgoing.host, result.outgoing.port) == ("smtp.acme.example", 587)
    assert result.outgoing.security == "starttls"
    assert (result.pop3.host, result.pop3.port, result.pop3.security) == (
        "pop.acme.example",
        995,
        "ssl",
    )
    assert outcomes(result)[:2] == [("preset_domain", "not_found"), ("mx", "not_found")]
    srv_steps = [s for s in result.steps if s.method == "srv"]
    assert len(srv_steps) == 6
    assert {s.target for s in srv_steps if s.outcome == "not_found"} == {f"SRV _pop3._tcp.{DOMAIN}"}
    assert web.requests == []


async def test_srv_dot_target_means_not_offered(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    dns.set_records(
        {
            f"_imaps._tcp.{DOMAIN}": ["SRV 0 0 0 ."],
            f"_imap._tcp.{DOMAIN}": ["SRV 10 1 143 mail.acme.example."],
            f"_submissions._tcp.{DOMAIN}": ["SRV 0 0 0 ."],
            f"_submission._tcp.{DOMAIN}": ["SRV 0 1 587 mail.acme.example."],
        }
    )
    result = await run(resolver, http, web)
    assert result.method == "srv"
    assert result.incoming is not None and result.outgoing is not None
    assert (result.incoming.port, result.incoming.security) == (143, "starttls")
    assert (result.outgoing.port, result.outgoing.security) == (587, "starttls")
    assert result.pop3 is None
    imaps = next(s for s in result.steps if s.target.startswith("SRV _imaps."))
    assert imaps.outcome == "not_found" and "not offered" in imaps.detail


async def test_only_dot_srv_falls_through_to_autoconfig(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    dns.set_records({f"_imaps._tcp.{DOMAIN}": ["SRV 0 0 0 ."]})
    web.routes[f"/{DOMAIN}/.well-known/autoconfig/mail/config-v1.1.xml"] = (
        200,
        AUTOCONFIG_XML.encode(),
        0.0,
    )
    result = await run(resolver, http, web)
    assert result.method == "autoconfig"
    assert [s.outcome for s in result.steps if s.method == "autoconfig"] == ["not_found", "found"]


async def test_autoconfig_xml(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    dns.set_records({DOMAIN: ["MX 10 mx.acme.example."]})
    web.routes[f"/autoconfig/{DOMAIN}/mail/config-v1.1.xml"] = (200, AUTOCONFIG_XML.encode(), 0.0)
    result = await run(resolver, http, web)
    assert result.method == "autoconfig"
    assert result.incoming is not None and result.outgoing is not None and result.pop3 is not None
    assert result.incoming.model_dump() == {
        "protocol": "imap",
        "host": "imap.acme.example",
        "port": 143,
        "security": "starttls",
        "username": "%EMAILLOCALPART%",
    }
    assert result.incoming.username_for(result.address) == "Jane.Doe"
    assert (result.pop3.host, result.pop3.port, result.pop3.security) == (
        "pop.acme.example",
        995,
        "ssl",
    )
    assert (result.outgoing.host, result.outgoing.port, result.outgoing.security) == (
        "smtp.acme.example",
        25,
        "none",
    )
    assert result.outgoing.username_for(result.address) == "Jane.Doe@acme.example"
    assert set(result.auth_modes) == {"password", "oauth2"}
    assert web.requests == [
        f"/autoconfig/{DOMAIN}/mail/config-v1.1.xml?emailaddress=Jane.Doe%40acme.example"
    ]


async def test_nothing_found_lists_every_step(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    dns.set_records({DOMAIN: ["MX 10 mx.acme.example.", 'TXT "v=spf1 -all"']})
    web.routes[f"/{DOMAIN}/.well-known/autoconfig/mail/config-v1.1.xml"] = (500, b"oops", 0.0)
    result = await run(resolver, http, web)
    assert result.method == "none" and not result.found
    assert result.incoming is None and result.outgoing is None and result.preset_id is None
    assert result.mx_hosts == ("mx.acme.example",)
    assert outcomes(result) == [
        ("preset_domain", "not_found"),
        ("mx", "not_found"),
        *[("srv", "not_found")] * 6,
        ("autoconfig", "not_found"),
        ("autoconfig", "not_found"),
    ]
    assert "HTTP 500" in result.steps[-1].detail
    assert {s.target for s in result.steps if s.method == "srv"} == {
        f"SRV {svc}._tcp.{DOMAIN}"
        for svc in ("_imaps", "_imap", "_pop3s", "_pop3", "_submissions", "_submission")
    }


async def test_null_mx(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    dns.set_records({DOMAIN: ["MX 0 ."]})
    result = await run(resolver, http, web)
    assert result.method == "none"
    mx = result.steps[1]
    assert (mx.method, mx.outcome) == ("mx", "not_found") and "null MX" in mx.detail


async def test_unanswering_dns_times_out_and_falls_through(
    http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    web.routes[f"/autoconfig/{DOMAIN}/mail/config-v1.1.xml"] = (200, AUTOCONFIG_XML.encode(), 0.0)
    with SilentDNSServer() as silent:
        resolver = make_resolver(silent.host, port=silent.port, timeout=0.3)
        started = time.monotonic()
        result = await discover(
            ADDRESS, resolver=resolver, http=http, timeout=0.3,
            autoconfig_urls=web.autoconfig_urls(),
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert result.method == "autoconfig"
    assert elapsed < 2.5  # MX and the 6 parallel SRV queries each give up after ~0.3 s
    assert outcomes(result) == [
        ("preset_domain", "not_found"),
        ("mx", "timeout"),
        *[("srv", "timeout")] * 6,
        ("autoconfig", "found"),
    ]


async def test_http_errors_and_timeouts_are_recorded(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    web.routes[f"/autoconfig/{DOMAIN}/mail/config-v1.1.xml"] = (200, b"<x/>", 2.0)
    refused = "http://127.0.0.1:1/{domain}/config.xml"  # nothing listens on port 1
    bad_xml = web.base + "/bad/{domain}.xml"
    web.routes[f"/bad/{DOMAIN}.xml"] = (200, b"<clientConfig><oops", 0.0)
    good = web.base + "/good/{localpart}.xml"
    web.routes["/good/Jane.Doe.xml"] = (200, AUTOCONFIG_XML.encode(), 0.0)
    started = time.monotonic()
    result = await discover(
        ADDRESS,
        resolver=resolver,
        http=http,
        timeout=0.5,
        autoconfig_urls=(web.autoconfig_urls()[0], refused, bad_xml, good),
    )
    assert time.monotonic() - started < 2.0
    assert result.method == "autoconfig"
    steps = [s for s in result.steps if s.method == "autoconfig"]
    assert [s.outcome for s in steps] == ["timeout", "error", "error", "found"]
    assert "ConnectError" in steps[1].detail
    assert "not a valid autoconfig" in steps[2].detail


async def test_autoconfig_with_entities_is_refused(
    dns: LocalDNSServer, resolver: Resolver, http: httpx.AsyncClient, web: _HTTPServer
) -> None:
    evil = (
        '<?xml version="1.0"?><!DOCTYPE clientConfig [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<clientConfig><emailProvider><incomingServer type='imap'><hostname>&x;</hostname>"
        "<port>993</port><socketType>SSL</socketType></incomingServer></emailProvider>"
        "</clientConfig>"
    )
    web.routes[f"/autoconfig/{DOMAIN}/mail/config-v1.1.xml"] = (200, evil.encode(), 0.0)
    result = await run(resolver, http, web)
    assert result.method == "none"
    first = next(s for s in result.steps if s.method == "autoconfig")
    assert first.outcome == "error" and "not a valid autoconfig" in first.detail


@pytest.mark.parametrize(
    "address", ["", "   ", "no-at-sign", "a@", "@acme.example", "a b@acme.example", "x@[127.0.0.1]"]
)
async def test_invalid_address(address: str, resolver: Resolver) -> None:
    with pytest.raises(InvalidAddressError):
        await discover(address, resolver=resolver, http=None, timeout=0.5)


async def test_local_dns_server_answers_udp_and_tcp(dns: LocalDNSServer) -> None:
    dns.set_records({"Mail.Acme.Example.": ["A 192.0.2.10", 'TXT "hello"']})
    query = dns_message.make_query("mail.acme.example", "A")
    for send in (dns_query.udp, dns_query.tcp):
        reply = await send(query, dns.host, timeout=2.0, port=dns.port)
        assert [rr.to_text() for rr in reply.answer[0]] == ["192.0.2.10"]
        assert reply.flags & dns_flags.AA
    missing = await dns_query.udp(
        dns_message.make_query("nope.acme.example", "A"), dns.host, timeout=2.0, port=dns.port
    )
    assert missing.rcode() == dns_rcode.NXDOMAIN
    assert ("mail.acme.example", "A") in dns.queries
