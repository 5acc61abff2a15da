"""``GET /v1/discover`` and accounts added from discovery, against a local DNS server and a
local autoconfig web server; autoconfig never reaches non-public addresses unless allowed."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from libs.common.natsserver import NatsServer
from services.registry.settings import RegistrySettings
from tests.support.dnsserver import LocalDNSServer
from tests.support.registry import start_custom, stop
from tests.support.stack import Stack

pytestmark = [pytest.mark.connected, pytest.mark.e2e]

AUTOCONFIG = b"""<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1"><emailProvider id="ac.example">
  <incomingServer type="imap"><hostname>imap.%EMAILDOMAIN%</hostname><port>993</port>
    <socketType>SSL</socketType><username>%EMAILLOCALPART%</username>
    <authentication>password-cleartext</authentication></incomingServer>
  <outgoingServer type="smtp"><hostname>smtp.ac.example</hostname><port>465</port>
    <socketType>SSL</socketType><username>%EMAILADDRESS%</username>
    <authentication>password-cleartext</authentication></outgoingServer>
</emailProvider></clientConfig>"""

RECORDS = {
    "mx.example": ["MX 10 aspmx.l.google.com."],
    "srv.example": ["MX 10 mx.srv.example."],
    "_imaps._tcp.srv.example": ["SRV 0 1 993 mail.srv.example."],
    "_submission._tcp.srv.example": ["SRV 0 1 587 mail.srv.example."],
    "ac.example": ['TXT "nothing here"'],
    "autoconfig.ac.example": ["A 127.0.0.1"],
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path.startswith("/mail/config-v1.1.xml")
        body = AUTOCONFIG if found else b"not found"
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def dns() -> Iterator[LocalDNSServer]:
    with LocalDNSServer(RECORDS) as server:
        yield server


async def make(tmp: Path, nats: NatsServer, dns: LocalDNSServer, web: int, allow: bool) -> Stack:
    settings = RegistrySettings(
        dns_server=f"{dns.host}:{dns.port}",
        autoconfig_urls=[f"http://autoconfig.{{domain}}:{web}/mail/config-v1.1.xml"],
        allow_private_targets=allow,
        discovery_timeout_s=2,
    )
    return await start_custom(tmp, nats, registry_settings=settings)


@pytest.fixture
async def stack(
    tmp_path: Path, nats_server: NatsServer, dns: LocalDNSServer, web: int
) -> AsyncIterator[Stack]:
    s = await make(tmp_path, nats_server, dns, web, allow=True)
    try:
        yield s
    finally:
        await stop(s)


async def discover(s: Stack, address: str) -> dict[str, Any]:
    r = await s.call("GET", "/v1/discover", params={"address": address})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_preset_mx_srv_and_autoconfig(stack: Stack) -> None:
    d = await discover(stack, "jane@gmail.com")
    assert (d["method"], d["preset_id"], d["servers_from"]) == ("preset_domain", "gmail", "preset")
    d = await discover(stack, "jane@mx.example")
    assert (d["method"], d["preset_id"], d["servers_from"]) == ("mx", "gmail", "discovery")
    d = await discover(stack, "jane@srv.example")
    assert d["method"] == "srv" and d["incoming"]["host"] == "mail.srv.example"
    assert [s["method"] for s in d["steps"]][:2] == ["preset_domain", "mx"]
    d = await discover(stack, "jane@ac.example")
    assert d["method"] == "autoconfig" and d["incoming"]["host"] == "imap.ac.example"
    assert d["steps"][-1]["outcome"] == "found"


async def test_address_and_password_use_discovery(stack: Stack) -> None:
    r = await stack.call(
        "POST", "/v1/accounts", json={"address": "jane@ac.example", "password": "pw"}
    )
    assert r.status_code == 201, r.text
    assert r.headers["mailroom-servers-from"] == "discovery"
    a = r.json()
    assert (a["protocol"], a["username"]) == ("imap", "jane")
    assert (a["incoming"]["host"], a["outgoing"]["host"]) == ("imap.ac.example", "smtp.ac.example")
    r = await stack.call(
        "POST", "/v1/accounts", json={"address": "bob@mx.example", "password": "pw"}
    )
    assert r.status_code == 201 and r.json()["preset_id"] == "gmail"


async def test_invalid_address(stack: Stack) -> None:
    r = await stack.call("GET", "/v1/discover", params={"address": "not an address"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_address"


async def test_autoconfig_never_reaches_private_addresses_by_default(
    tmp_path: Path, nats_server: NatsServer, dns: LocalDNSServer, web: int
) -> None:
    s = await make(tmp_path, nats_server, dns, web, allow=False)
    try:
        d = await discover(s, "jane@ac.example")
        assert d["method"] == "none" and d["servers_from"] == "none"
        step = d["steps"][-1]
        assert step["method"] == "autoconfig" and step["outcome"] == "error"
        assert "127.0.0.1, a loopback address: refused" in step["detail"]
        r = await s.call(
            "POST", "/v1/accounts", json={"address": "jane@ac.example", "password": "x"}
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "servers_not_found"
    finally:
        await stop(s)
