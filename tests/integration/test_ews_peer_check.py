"""Every connection exchangelib makes is checked against the registry's network guard.

exchangelib (through requests) resolves the EWS URL's host itself, and that URL may name another
host than the one the connection test resolved and checked: a DNS answer that changes between the
two (rebinding) or a URL pointing elsewhere would otherwise reach an address the guard refuses.
The peer check runs on the connected socket, before TLS and before any byte of HTTP.

Exchange cannot run here: the server is tests/support/ews_server.py, a local HTTPS server that
answers with recorded EWS responses.
"""

# ruff: noqa: F811 -- the ews_server fixture is a parameter here
from __future__ import annotations

import pytest
from pydantic import SecretStr

from libs.common.ews import EwsClient, EwsError
from services.registry.connect_ews import _inbox_count
from tests.support.ews_server import EwsServer, ews_server  # noqa: F401 -- fixture
from tests.support.tlsca import session_pki


def _inbox_total(account: object) -> int:
    return _inbox_count(account, True)


def _client(server: EwsServer, password: str, **kw: object) -> EwsClient:
    context = session_pki().client_context()
    return EwsClient(
        server.url, "anna@corp.example", "anna@corp.example", SecretStr(password), "password",
        context, 5.0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_refused_peer_is_never_sent_a_byte(ews_server: EwsServer) -> None:
    password = ews_server.add_mailbox("anna@corp.example", password="pw-anna-1")
    seen: list[tuple[str, str]] = []

    def refuse(host: str, address: str) -> None:
        seen.append((host, address))
        raise EwsError("not_allowed", f"{host} resolves to {address}: refused")

    client = _client(ews_server, password, peer_check=refuse)
    with pytest.raises(EwsError) as info:
        client.call(_inbox_total)
    assert info.value.kind == "not_allowed"
    assert seen and seen[0][1] == "127.0.0.1"
    assert ews_server.requests == []


def test_an_allowed_peer_works_as_before(ews_server: EwsServer) -> None:
    password = ews_server.add_mailbox("anna@corp.example", password="pw-anna-2")
    seen: list[str] = []
    client = _client(ews_server, password, peer_check=lambda host, address: seen.append(address))
    assert client.call(_inbox_total) == 0
    assert seen and set(seen) == {"127.0.0.1"}
