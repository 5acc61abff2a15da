"""A POP3 mailbox connected by OAuth2 end to end: the authorization-code flow against the local
authlib server, polled by a real POP3 XOAUTH2 login to a Dovecot whose oauth2 passdb
introspects the token, tested by the registry's own connection test; a refused access token
is refreshed once, a revoked grant turns the mailbox auth_failed. Registry, sync, sender and
audit on a real nats-server (the fixtures of test_registry_oauth_mail)."""

# ruff: noqa: F811 -- pytest fixtures imported from test_registry_oauth_mail are parameters here

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest

from tests.e2e.test_registry_oauth_mail import (  # noqa: F401 -- fixtures
    assert_no_token,
    audit_text,
    imap,
    oauth,
    poll,
    reaches,
    smtp,
    stack,
    state,
    xoauth2_logins,
)
from tests.support.dovecot import Dovecot
from tests.support.oauthflow import connect
from tests.support.oauthserver import OAuthServer
from tests.support.smtpd_oauth import OAuthSmtpServer
from tests.support.stack import Stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]


async def pop3_mailbox(
    stack: Stack, oauth: OAuthServer, imap: Dovecot, smtp: OAuthSmtpServer
) -> tuple[str, str]:
    user, _ = imap.new_user("oauthpop")
    body = {
        "address": f"{user}@corp.example",
        "protocol": "pop3",
        "auth_mode": "oauth2",
        "username": user,
        "incoming": {"host": "127.0.0.1", "port": imap.pop3s_port, "security": "ssl"},
        "outgoing": {"host": "127.0.0.1", "port": smtp.starttls_port, "security": "starttls"},
        "polling_interval_s": 300,
    }
    r = await stack.call("POST", "/v1/accounts", json=body)
    assert r.status_code == 201, r.text
    oauth.approve_as = user
    return str(r.json()["id"]), user


async def test_pop3_mailbox_over_xoauth2_polls_refreshes_once_and_fails_on_revocation(
    stack: Stack,
    oauth: OAuthServer,
    imap: Dovecot,
    smtp: OAuthSmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    account, user = await pop3_mailbox(stack, oauth, imap, smtp)
    done = await connect(stack, account)
    await reaches(stack, account, "online")
    imap.deliver(user, b"From: a@example.org\r\nSubject: pop via oauth\r\n\r\nhi\r\n")
    await poll(stack, account)

    async def counted(n: int) -> bool:
        return (await state(stack, account)).get("message_count") == n

    await wait_until(lambda: counted(1))
    tested = await stack.call("POST", f"/v1/accounts/{account}/test")
    report: dict[str, Any] = tested.json()
    assert tested.status_code == 200 and report["ok"], tested.text
    steps = {s["name"]: s["status"] for s in report["incoming"]["steps"]}
    assert steps["login"] == "ok" and steps["mailbox_select"] == "ok"

    await asyncio.sleep(1.1)  # older than the forced-refresh floor of this test
    oauth.revoke_access(user)  # the access token dies, the grant lives on
    logins = xoauth2_logins(imap, user)
    imap.deliver(user, b"From: a@example.org\r\nSubject: after refresh\r\n\r\nhi\r\n")
    await poll(stack, account)
    await wait_until(lambda: counted(2))
    assert xoauth2_logins(imap, user) > logins and oauth.stats.refresh_grants == 1
    assert (await state(stack, account))["failures"] == 0

    await asyncio.sleep(1.1)
    oauth.revoke_user(user)  # the user removed Mailroom's access at the provider
    await poll(stack, account)
    failed = await reaches(stack, account, "auth_failed")
    assert "oauth_reconnect_required" in failed["last_error"]
    refused = await stack.call("POST", f"/v1/accounts/{account}/test", params={"timeout_s": 5})
    assert refused.json()["incoming"]["failure"] == "auth_failed", refused.text

    texts = (json.dumps(done), tested.text, refused.text, await audit_text(stack))
    logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("authlib"))
    assert_no_token(oauth, *texts, logs)
    for t in oauth.tokens:  # nor the SASL strings that carry them
        sasl = base64.b64encode(f"user={user}\x01auth=Bearer {t.access_token}\x01\x01".encode())
        assert sasl.decode() not in logs
