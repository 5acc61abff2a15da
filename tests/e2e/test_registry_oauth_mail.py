"""OAuth2 mailboxes end to end: connected by the authorization-code flow against the local
authlib server, synced by a real XOAUTH2 login to a Dovecot whose oauth2 passdb introspects
the token at that server, and sending by a real XOAUTH2 login to aiosmtpd (same check).
Access tokens are refreshed before they expire and once after a refused login; a revoked
grant turns the mailbox to auth_failed with reconnect guidance, and reconnecting heals it.
Registry, sync, sender and audit on a real nats-server; credentials leased."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.natsserver import NatsServer
from tests.integration.test_sender_support import FAST as SENDER_FAST
from tests.integration.test_sync_support import FAST as SYNC_FAST
from tests.support.dovecot import Dovecot
from tests.support.oauthflow import (
    PROVIDER,
    configure_mailroom,
    connect,
    oauth_dovecot,
    running_oauth_server,
)
from tests.support.oauthserver import OAuthServer, Stats
from tests.support.registry import stop
from tests.support.smtpd_oauth import OAuthSmtpServer
from tests.support.stack import Stack, start_stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]
_keys = itertools.count(1)


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    yield from running_oauth_server()


@pytest.fixture(scope="module")
def imap(oauth: OAuthServer) -> Iterator[Dovecot]:
    yield from oauth_dovecot(oauth)


@pytest.fixture(scope="module")
def smtp(oauth: OAuthServer) -> Iterator[OAuthSmtpServer]:
    server = OAuthSmtpServer(introspect=oauth.active_user).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def stack(
    tmp_path: Path,
    nats_server: NatsServer,
    oauth: OAuthServer,
    imap: Dovecot,
    smtp: OAuthSmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stack]:
    oauth.stats, oauth.expires_in, oauth.rotate_refresh = Stats(), 3600, False
    configure_mailroom(oauth, monkeypatch)
    env = {
        **SYNC_FAST,
        **SENDER_FAST,
        "MAILROOM_SYNC_CA_FILE": str(imap.ca_path),
        "MAILROOM_SENDER_CA_FILE": str(smtp.ca_path),
        "MAILROOM_SENDER_SENT_COPY": "false",
        "MAILROOM_SYNC_MAX_CONNECTIONS": "0",  # every poll logs in
        # every send logs in (a pooled, authenticated SMTP session outlives a revoked token:
        # tests/integration/test_sender_pool.py covers the pool)
        "MAILROOM_SENDER_SMTP_POOL_PER_MAILBOX": "0",
        "MAILROOM_REGISTRY_OAUTH_FORCED_REFRESH_MIN_AGE_S": "1",
        "MAILROOM_REGISTRY_CA_FILE": str(imap.ca_path),  # connection tests
        "MAILROOM_REGISTRY_ALLOW_PRIVATE_TARGETS": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = await start_stack(tmp_path, nats_server, ("registry", "sync", "sender", "audit"))
    try:
        yield s
    finally:
        await stop(s)


async def mailbox(stack: Stack, oauth: OAuthServer, imap: Dovecot, smtp: OAuthSmtpServer) -> Any:
    user, _ = imap.new_user("oauth")  # the Dovecot user the provider's token names
    body = {
        "address": f"{user}@corp.example",
        "protocol": "imap",
        "auth_mode": "oauth2",
        "username": user,
        "incoming": {"host": "127.0.0.1", "port": imap.imap_port, "security": "starttls"},
        "outgoing": {"host": "127.0.0.1", "port": smtp.starttls_port, "security": "starttls"},
        "polling_interval_s": 300,  # polls come when the test asks
    }
    r = await stack.call("POST", "/v1/accounts", json=body)
    assert r.status_code == 201, r.text
    oauth.approve_as = user
    return str(r.json()["id"]), user


async def state(stack: Stack, account: str) -> dict[str, Any]:
    r = await stack.call("GET", f"/v1/sync/mailboxes/{account}")
    return dict(r.json()["status"]) if r.status_code == 200 else {}


async def reaches(stack: Stack, account: str, wanted: str, timeout: float = 20) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        s = await state(stack, account)
        return s if s.get("state") == wanted else None

    return await wait_until(check, timeout=timeout)


async def poll(stack: Stack, account: str) -> None:
    r = await stack.call("POST", f"/v1/accounts/{account}/sync")
    assert r.status_code == 202, r.text


async def send(stack: Stack, account: str, subject: str) -> dict[str, Any]:
    async def known() -> bool:
        return (await stack.call("GET", f"/v1/mailboxes/{account}/sending")).status_code == 200

    await wait_until(known)
    r = await stack.call(
        "POST",
        f"/v1/mailboxes/{account}/messages",
        json={"to": ["alice@example.org"], "subject": subject, "text": "hello"},
        headers={"Idempotency-Key": f"oauth-{next(_keys)}"},
    )
    assert r.status_code in (201, 202), r.text
    return dict(r.json())


def xoauth2_logins(imap: Dovecot, user: str) -> int:
    return imap.logs().count(f"Login: user=<{user}>, method=XOAUTH2")


async def audit_text(stack: Stack) -> str:
    r = await stack.call("GET", "/v1/audit/export")
    assert r.status_code == 200
    return r.text


def assert_no_token(oauth: OAuthServer, *texts: str) -> None:
    for t in oauth.tokens:
        for text in texts:
            assert t.access_token not in text and (t.refresh_token or "-") not in text


async def test_connected_mailbox_syncs_and_sends_over_xoauth2(
    stack: Stack,
    oauth: OAuthServer,
    imap: Dovecot,
    smtp: OAuthSmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account, user = await mailbox(stack, oauth, imap, smtp)
    done = await connect(stack, account)
    await reaches(stack, account, "online")  # the new credential is tried at once
    assert xoauth2_logins(imap, user) >= 1

    imap.deliver(user, b"From: a@example.org\r\nSubject: via oauth\r\n\r\nhi\r\n")
    await poll(stack, account)

    async def counted() -> bool:
        return (await state(stack, account)).get("message_count") == 1

    await wait_until(counted)

    sent = await send(stack, account, "Sent with XOAUTH2")
    [msg] = await smtp.messages_async(1, timeout=20)
    assert msg.auth_user == user and msg.message()["Subject"] == "Sent with XOAUTH2"
    assert (user, True) in smtp.xoauth2_logins

    tested = await stack.call("POST", f"/v1/accounts/{account}/test")  # the registry's own
    report = tested.json()
    assert tested.status_code == 200 and report["ok"], tested.text
    steps = {s["name"]: s["status"] for s in report["incoming"]["steps"]}
    assert steps["login"] == "ok" and steps["mailbox_select"] == "ok"
    assert {s["name"]: s["status"] for s in report["outgoing"]["steps"]}["smtp_auth"] == "ok"
    assert oauth.stats.refresh_grants == 0  # the first access token served all of it
    texts = (json.dumps(done), json.dumps(sent), tested.text, await audit_text(stack))
    # every log record of this process at DEBUG, but the provider's own (authlib)
    logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("authlib"))
    assert_no_token(oauth, *texts, logs)
    for t in oauth.tokens:  # nor the SASL strings that carry them
        sasl = base64.b64encode(f"user={user}\x01auth=Bearer {t.access_token}\x01\x01".encode())
        assert sasl.decode() not in logs


async def test_expiring_access_token_is_refreshed_before_the_next_login(
    stack: Stack, oauth: OAuthServer, imap: Dovecot, smtp: OAuthSmtpServer
) -> None:
    oauth.expires_in = 8  # the first token lives 8 s (refreshed after 4); later ones an hour
    account, user = await mailbox(stack, oauth, imap, smtp)
    await connect(stack, account)
    oauth.expires_in = 3600
    [first] = [t for t in oauth.tokens if t.user.name == user]  # from the code exchange
    await reaches(stack, account, "online")
    await asyncio.sleep(4.5)  # more than half its life gone
    await poll(stack, account)

    async def refreshed() -> bool:
        s = await state(stack, account)
        return oauth.stats.refresh_grants >= 1 and s.get("last_success_at", "") > after

    after = (await state(stack, account))["last_success_at"]
    await wait_until(refreshed)
    later = [t for t in oauth.tokens if t.user.name == user][1:]
    assert later and all(t.active for t in later)
    assert oauth.stats.refreshed_at[0] < first.expires_at  # refreshed before it expired
    assert (await state(stack, account))["state"] == "online"
    assert xoauth2_logins(imap, user) >= 2
    assert '"cause": "oauth_refresh"' in (await audit_text(stack)).replace('":"', '": "')


async def test_refused_access_token_is_refreshed_once_by_sync_and_sender(
    stack: Stack, oauth: OAuthServer, imap: Dovecot, smtp: OAuthSmtpServer
) -> None:
    account, user = await mailbox(stack, oauth, imap, smtp)
    await connect(stack, account)
    await reaches(stack, account, "online")
    await send(stack, account, "one")
    await smtp.messages_async(1, timeout=20)
    await asyncio.sleep(1.1)  # older than the forced-refresh floor of this test

    oauth.revoke_access(user)  # the access token dies, the grant lives on
    logins = xoauth2_logins(imap, user)
    await poll(stack, account)

    async def relogged() -> bool:
        return xoauth2_logins(imap, user) > logins

    await wait_until(relogged)
    s = await state(stack, account)
    assert s["state"] == "online" and s["failures"] == 0
    assert oauth.stats.refresh_grants == 1

    oauth.revoke_access(user)
    await asyncio.sleep(1.1)
    await send(stack, account, "two")
    await smtp.messages_async(2, timeout=20)
    assert smtp.xoauth2_logins[-2:] == [(user, False), (user, True)]
    assert oauth.stats.refresh_grants == 2


async def test_revoked_grant_turns_mailbox_auth_failed_with_reconnect_guidance(
    stack: Stack, oauth: OAuthServer, imap: Dovecot, smtp: OAuthSmtpServer
) -> None:
    account, user = await mailbox(stack, oauth, imap, smtp)
    await connect(stack, account)
    await reaches(stack, account, "online")
    await asyncio.sleep(1.1)

    oauth.revoke_user(user)  # the user removed Mailroom's access at the provider
    await poll(stack, account)
    failed = await reaches(stack, account, "auth_failed")
    assert "oauth_reconnect_required" in failed["last_error"]
    assert f"/v1/oauth/{PROVIDER}/start?account={account}" in failed["last_error"]
    assert "invalid_grant" in oauth.stats.refused
    tested = await stack.call("POST", f"/v1/accounts/{account}/test", params={"timeout_s": 5})
    assert tested.json()["incoming"]["failure"] == "auth_failed"  # refused at once, no time-out

    await connect(stack, account)  # reconnecting: a new grant, tried at once
    await reaches(stack, account, "online")
    assert_no_token(oauth, await audit_text(stack))
