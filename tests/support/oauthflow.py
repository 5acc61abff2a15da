"""Mailroom as a client of the local OAuth2 server: its configuration and the browser's part
of the authorization-code flow (``start`` -> the server approves -> ``callback``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.support.dovecot import Dovecot, require_dovecot
from tests.support.oauthserver import OAuthServer
from tests.support.stack import Stack
from tests.support.tlsca import session_pki

CLIENT_ID = "mailroom"
CLIENT_SECRET = "mailroom-client-secret-0001"
PROVIDER = "corp"


def configure_mailroom(server: OAuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Register Mailroom as a client of ``server`` (provider ``corp`` of tenant ``acme``,
    discovered through its issuer) and point the registry's environment at it."""
    server.add_client(CLIENT_ID, CLIENT_SECRET, [f"http://mailroom/v1/oauth/{PROVIDER}/callback"])
    clients = {
        "acme": {
            PROVIDER: {
                "issuer": server.issuer,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }
        }
    }
    monkeypatch.setenv("MAILROOM_OAUTH_CLIENTS", json.dumps(clients))


async def browse(location: str) -> httpx.Response:
    """The browser at the provider: the local server approves at once and redirects back."""
    async with httpx.AsyncClient() as browser:
        return await browser.get(location)


async def authorize(stack: Stack, account_id: str, **who: Any) -> tuple[str, str]:
    """Start the flow as ``who`` and play the browser up to the redirect back to Mailroom;
    returns (callback path with query, state)."""
    url = f"/v1/oauth/{PROVIDER}/start"
    r = await stack.call("GET", url, params={"account": account_id}, **who)
    assert r.status_code == 302, r.text
    back = await browse(r.headers["location"])
    assert back.status_code == 302, back.text
    cb = urlsplit(back.headers["location"])
    return f"{cb.path}?{cb.query}", dict(parse_qsl(cb.query))["state"]


async def connect(stack: Stack, account_id: str, **who: Any) -> dict[str, Any]:
    """The whole authorization-code flow; the callback carries the start's cookie only."""
    callback, _ = await authorize(stack, account_id, **who)
    r = await stack.client.get(callback)
    assert r.status_code == 200, r.text
    return dict(r.json())


def running_oauth_server() -> Iterator[OAuthServer]:
    """A local authorization server for a fixture: ``yield from running_oauth_server()``."""
    server = OAuthServer().start()
    try:
        yield server
    finally:
        server.stop()


def oauth_dovecot(oauth: OAuthServer) -> Iterator[Dovecot]:
    """A Dovecot whose XOAUTH2 logins are checked at ``oauth`` (token introspection), for a
    fixture: ``yield from oauth_dovecot(oauth)``."""
    require_dovecot()
    url = oauth.add_resource_server("dovecot", "dovecot-introspection-pw")
    server = Dovecot(pki=session_pki(), oauth2_introspection_url=url)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
