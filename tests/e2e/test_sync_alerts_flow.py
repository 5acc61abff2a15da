"""Alerts end to end: a mailbox whose password Dovecot refuses raises one alert — a signed
webhook to a local HTTPS receiver and an email through the sender to aiosmtpd — repeated
failures inside the throttle window raise nothing more, and the fixed password brings one
recovery notice on both channels. Registry, authz, sync, sender and audit on a real
nats-server; the rule is set over HTTP."""

# ruff: noqa: F811 -- the webhook fixture imported from tests.support.webhook is a parameter

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.natsserver import NatsServer
from services.sync.alerts_webhook import verify
from tests.integration.test_sync_support import FAST as SYNC_FAST
from tests.support.dovecot import Dovecot
from tests.support.registry import stop
from tests.support.sending import SENDER_ENV, Mail
from tests.support.smtpd import SmtpServer
from tests.support.stack import Stack, start_stack, wait_until
from tests.support.sync_workers import stored_events
from tests.support.webhook import WebhookServer, webhook  # noqa: F401 -- fixture

pytestmark = [pytest.mark.e2e, pytest.mark.connected]

SECRET = "whsec-0123456789abcdef"
SERVICES = ("registry", "authz", "sync", "sender", "audit")


@pytest.fixture
async def stack(
    tmp_path: Path,
    nats_server: NatsServer,
    dovecot: Dovecot,
    smtpd: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stack]:
    for k, v in {**SYNC_FAST, **SENDER_ENV}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAILROOM_SYNC_CA_FILE", str(dovecot.ca_path))
    monkeypatch.setenv("MAILROOM_SENDER_CA_FILE", str(smtpd.ca_path))
    monkeypatch.setenv("MAILROOM_SYNC_ALERT_POLL_S", "0.2")
    s = await start_stack(tmp_path, nats_server, SERVICES)
    try:
        yield s
    finally:
        await stop(s)


async def watched_mailbox(stack: Stack, dovecot: Dovecot, user: str, password: str) -> str:
    body = {
        "address": f"{user}@corp.example",
        "protocol": "imap",
        "incoming": {"host": "127.0.0.1", "port": dovecot.imap_port, "security": "starttls"},
        "outgoing": {"host": "127.0.0.1", "port": 25, "security": "starttls"},
        "username": user,
        "password": password,
        "polling_interval_s": 30,
    }
    r = await stack.call("POST", "/v1/accounts", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def sync_state(stack: Stack, account: str) -> str | None:
    r = await stack.call("GET", f"/v1/sync/mailboxes/{account}")
    return r.json()["status"]["state"] if r.status_code == 200 else None


async def test_a_refused_password_alerts_once_by_webhook_and_email_then_recovers(
    stack: Stack, dovecot: Dovecot, smtpd: SmtpServer, webhook: WebhookServer
) -> None:
    mail = Mail(stack, smtpd)
    alert_from = await mail.mailbox("alerts@corp.example")
    rule = {
        "name": "logins refused",
        "kinds": ["auth_failed"],
        "email": {"mailbox_id": alert_from, "to": ["ops@corp.example"]},
        "webhook": {"url": f"{webhook.url}/hooks/mail", "secret": SECRET},
        "throttle_s": 3600,
    }
    r = await stack.call("POST", "/v1/alerts/rules", json=rule)
    assert r.status_code == 201, r.text
    assert SECRET not in r.text and r.json()["webhook"]["secret_set"] is True

    user, password = dovecot.new_user("alerted")
    account = await watched_mailbox(stack, dovecot, user, password + "-wrong")

    async def refused() -> bool:
        return await sync_state(stack, account) == "auth_failed"

    await wait_until(refused, timeout=20)
    first = await wait_until(lambda: _ready(webhook.delivered()), timeout=20)
    assert first is not None
    [hit] = first
    assert hit.path == "/hooks/mail"
    assert verify(
        SECRET.encode(),
        hit.headers["mailroom-timestamp"],
        hit.body,
        hit.headers["mailroom-signature"],
    )
    assert not verify(
        b"another secret 123",
        hit.headers["mailroom-timestamp"],
        hit.body,
        hit.headers["mailroom-signature"],
    )
    doc = hit.json()
    assert doc["kind"] == "auth_failed" and doc["reason_class"] == "auth"
    assert doc["mailbox"] == {"id": account, "address": f"{user}@corp.example"}
    assert doc["id"] == hit.headers["mailroom-alert-id"] and doc["rule"]["name"] == rule["name"]
    assert password not in hit.body.decode() and SECRET not in hit.body.decode()
    [email] = await mail.delivered(1)
    assert email["To"] == "ops@corp.example"
    assert email["From"].endswith("<alerts@corp.example>") or "alerts@corp.example" in email["From"]
    assert "login refused" in email["Subject"] and f"{user}@corp.example" in email["Subject"]

    # Throttled: another failure of the same mailbox inside the window alerts nobody.
    r = await stack.call("POST", f"/v1/accounts/{account}/sync")
    assert r.status_code == 202, r.text

    async def second_failure() -> bool:
        events = await stored_events(
            stack.host.runtime.js, f"mailroom.acme.sync.mailbox.{account}.SyncFailed"
        )
        return len(events) >= 2

    await wait_until(second_failure, timeout=20)
    await _quiet(stack)
    assert len(webhook.hits) == 1 and len(smtpd.messages) == 1

    # The right password: one recovery notice on each channel.
    r = await stack.call("PUT", f"/v1/accounts/{account}/credential", json={"password": password})
    assert r.status_code == 200, r.text
    hits = await wait_until(lambda: _ready(webhook.delivered(), 2), timeout=20)
    assert hits is not None
    recovered = hits[1].json()
    assert recovered["kind"] == "recovered" and recovered["recovered"] == ["auth_failed"]
    emails = await mail.delivered(2)
    assert "recovered" in emails[1]["Subject"]

    async def all_sent() -> list[tuple[str, str]] | None:
        sent = await stored_events(stack.host.runtime.js, "mailroom.acme.sync.alert.*.AlertSent")
        kinds = sorted((e.data["kind"], e.data["channel"]) for e in sent)
        return kinds if len(kinds) >= 4 else None

    assert await wait_until(all_sent, timeout=10) == [
        ("auth_failed", "email"),
        ("auth_failed", "webhook"),
        ("recovered", "email"),
        ("recovered", "webhook"),
    ]
    r = await stack.call("GET", "/v1/alerts/deliveries")
    assert [d["state"] for d in r.json()["items"]] == ["sent"] * 4


async def _ready(items: list[Any], n: int = 1) -> list[Any] | None:
    return items if len(items) >= n else None


async def _quiet(stack: Stack) -> None:
    """Until the alert consumer has applied everything and nothing is pending."""

    async def idle() -> bool:
        info = await stack.host.runtime.js.consumer_info("MAILROOM", "sync-alerts")
        r = await stack.call("GET", "/v1/alerts/deliveries", params={"state": "pending"})
        return info.num_pending == 0 and info.num_ack_pending == 0 and not r.json()["items"]

    await wait_until(idle, timeout=10)
