"""POP3 with OAuth2 (SASL XOAUTH2, RFC 5034) against a real Dovecot whose oauth2 passdb
introspects the bearer token at the local authlib server: the sync session (initial response,
and the two-step form for tokens too long for one command line), the registry's connection
test, and the sync watcher's refresh-once on a refused token. Refused tokens end at the
server's error challenge at once (no time-out), and no token or SASL string reaches a log."""

# ruff: noqa: F811 -- pytest fixtures imported from test_sync_support are parameters here

from __future__ import annotations

import base64
import logging
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from libs.common.events.registry import Server
from libs.common.natsserver import NatsServer
from libs.common.pop3_xoauth2 import MAX_COMMAND
from services.registry.connect import Credential as ProbeCredential
from services.registry.connect import check_server
from services.registry.netguard import Network
from services.sync.domain import SyncError
from services.sync.pop3 import Pop3Session
from services.sync.ports import Credential, StaticCredentials
from tests.integration.test_sync_support import (  # noqa: F401 -- fixtures
    SyncHarness,
    close_harness,
    open_harness,
    raw_mail,
    sync_env,
)
from tests.support.dovecot import Dovecot
from tests.support.oauthflow import oauth_dovecot, running_oauth_server
from tests.support.oauthmodels import Token, User
from tests.support.oauthserver import OAuthServer
from tests.support.tlsca import session_pki

pytestmark = pytest.mark.connected


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    yield from running_oauth_server()


@pytest.fixture(scope="module")
def dovecot(oauth: OAuthServer) -> Iterator[Dovecot]:
    """This module's Dovecot (overrides the session one): XOAUTH2 checked at ``oauth``."""
    yield from oauth_dovecot(oauth)


def mint(oauth: OAuthServer, user: str, *, length: int = 32) -> str:
    """An access token the server will call active for ``user`` (as if from a grant)."""
    token = "at-" + secrets.token_urlsafe(length)[:length]
    oauth.tokens.append(Token("mailroom", User(user), "mail", token, None, time.time() + 600))
    return token


def sasl(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def xoauth2_logins(server: Dovecot, user: str) -> int:
    return server.logs().count(f"Login: user=<{user}>, method=XOAUTH2")


def ctx(server: Dovecot) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_path))


async def open_pop3(server: Dovecot, user: str, token: str, security: str) -> Pop3Session:
    port = server.pop3s_port if security == "ssl" else server.pop3_port
    srv = Server(protocol="pop3", host=server.host, port=port, security=security)
    cred = Credential(user, SecretStr(token), "oauth2")
    return await Pop3Session.open(
        srv, cred, ctx(server), executor=None, connect_timeout=5, timeout=5
    )


def no_secret(texts: list[str], user: str, *tokens: str) -> None:
    for text in texts:
        for t in tokens:
            assert t not in text and sasl(user, t) not in text


# --- the sync session ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("security", "length"),
    [("starttls", 32), ("ssl", 32), ("starttls", 400)],  # 400: too long for one command line
)
async def test_sync_session_logs_in_with_xoauth2_and_lists_the_mail(
    dovecot: Dovecot, oauth: OAuthServer, security: str, length: int
) -> None:
    user, _ = dovecot.new_user("pop-oauth")
    dovecot.deliver(user, raw_mail("over xoauth2"))
    token = mint(oauth, user, length=length)
    assert (len(f"AUTH XOAUTH2 {sasl(user, token)}") + 2 > MAX_COMMAND) == (length > 100)
    s = await open_pop3(dovecot, user, token, security)
    try:
        listing = await s.listing()
        [meta] = await s.headers(listing.uidls.values(), listing.sizes)
    finally:
        await s.finish()
    assert meta.subject == "over xoauth2"
    assert xoauth2_logins(dovecot, user) == 1


@pytest.mark.parametrize("length", [32, 400])
async def test_sync_session_refused_token_is_an_auth_failure_at_once(
    dovecot: Dovecot, oauth: OAuthServer, caplog: pytest.LogCaptureFixture, length: int
) -> None:
    caplog.set_level(logging.DEBUG)
    user, _ = dovecot.new_user("pop-oauth")
    token = mint(oauth, user, length=length)
    oauth.revoke_access(user)
    t0 = time.monotonic()
    with pytest.raises(SyncError) as err:
        await open_pop3(dovecot, user, token, "starttls")
    assert time.monotonic() - t0 < 3  # ended by the error challenge, not the 5 s time-out
    assert err.value.reason_class == "auth"
    assert "-ERR" in err.value.detail and "XOAUTH2 status" in err.value.detail
    no_secret([str(err.value), err.value.detail, caplog.text], user, token)


# --- the registry's connection test -------------------------------------------------------
@pytest.fixture
def network() -> Network:
    return Network.create(
        dns_server=None,
        ca_file=session_pki().ca_path,
        autoconfig_urls=(),
        discovery_timeout=2,
        connect_timeout=5,
        allow_private=True,
    )


async def probe(network: Network, server: Dovecot, user: str, token: str, security: str) -> Any:
    port = server.pop3s_port if security == "ssl" else server.pop3_port
    srv = Server(protocol="pop3", host=server.host, port=port, security=security)
    cred = ProbeCredential(user, SecretStr(token), "oauth2")
    return await check_server(network, srv, "incoming", cred, reach="any")


@pytest.mark.parametrize(("security", "length"), [("starttls", 32), ("ssl", 400)])
async def test_connection_test_of_a_pop3_oauth2_account(
    dovecot: Dovecot,
    oauth: OAuthServer,
    network: Network,
    caplog: pytest.LogCaptureFixture,
    security: str,
    length: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    user, _ = dovecot.new_user("pop-oauth")
    dovecot.deliver(user, raw_mail("one"))
    good = mint(oauth, user, length=length)
    ok = await probe(network, dovecot, user, good, security)
    assert ok.ok, ok.model_dump_json()
    steps = {s.name: s.status for s in ok.steps}
    assert steps["login"] == "ok" and steps["mailbox_select"] == "ok"

    bad = mint(oauth, user, length=length)
    oauth.revoke_access(user)
    t0 = time.monotonic()
    refused = await probe(network, dovecot, user, bad, security)
    assert time.monotonic() - t0 < 3  # no step time-out
    step = next(s for s in refused.steps if s.status == "failed")
    assert (step.name, step.failure) == ("login", "auth_failed")
    assert "-ERR" in (step.detail or "")
    no_secret([ok.model_dump_json(), refused.model_dump_json(), caplog.text], user, good, bad)


# --- the sync watcher: MessageReceived, refresh once, auth_failed --------------------------
class OAuthCredentials(StaticCredentials):
    """Access tokens minted at the local server; ``refresh`` mints a new one (as the registry
    does with the grant) unless the grant is gone."""

    def __init__(self, oauth: OAuthServer) -> None:
        super().__init__()
        self.oauth = oauth
        self.current: dict[tuple[str, str], str] = {}
        self.refreshes = 0
        self.grant_revoked = False
        self.minted: list[str] = []

    def set(self, tenant_id: str, account_id: str, username: str, secret: str) -> None:
        super().set(tenant_id, account_id, username, mint(self.oauth, username))  # no password

    async def get(self, tenant_id: str, account_id: str, *, refresh: bool = False) -> Credential:
        self.calls += 1
        user, token = self.entries[(tenant_id, account_id)]
        if refresh:
            self.refreshes += 1
            if self.grant_revoked:
                raise SyncError("auth", "oauth_reconnect_required: the grant was revoked")
            token = mint(self.oauth, user)
            self.entries[(tenant_id, account_id)] = (user, token)
        self.minted.append(token)
        return Credential(user, SecretStr(token), "oauth2")


async def test_watcher_polls_pop3_over_xoauth2_and_refreshes_a_refused_token_once(
    tmp_path: Path,
    nats_server: NatsServer,
    sync_env: dict[str, str],
    dovecot: Dovecot,
    oauth: OAuthServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = OAuthCredentials(oauth)
    h: SyncHarness = await open_harness(tmp_path, nats_server, creds)
    try:
        user, _ = dovecot.new_user("pop-oauth")
        acc = await h.add_account(dovecot, user, "-", protocol="pop3", interval=300)
        await h.wait_state(acc, "online")
        dovecot.deliver(user, raw_mail("pop over oauth"))
        await h.force(acc)
        [got] = await h.wait_event("MessageReceived", acc)
        assert got.data["subject"] == "pop over oauth" and got.data["uidl"]

        oauth.revoke_access(user)  # the access token dies, the grant lives on
        logins = xoauth2_logins(dovecot, user)
        dovecot.deliver(user, raw_mail("after refresh"))
        await h.force(acc)
        await h.wait_event("MessageReceived", acc, count=2)
        assert creds.refreshes == 1 and xoauth2_logins(dovecot, user) == logins + 1
        status = (await h.status(acc))["status"]
        assert status["state"] == "online" and status["failures"] == 0

        oauth.revoke_access(user)
        creds.grant_revoked = True  # the user removed the app's access at the provider
        await h.force(acc)
        failed = (await h.wait_state(acc, "auth_failed"))["status"]
        assert creds.refreshes == 2
        assert "oauth_reconnect_required" in failed["last_error"]
        out, err = capfd.readouterr()
        texts = [caplog.text, out, err, str(failed), *(str(e.data) for e in h.seen)]
        no_secret(texts, user, *creds.minted)
    finally:
        await close_harness(h)
