"""Alert rules over HTTP (admin only, validated, idempotent, secrets never shown) and their
delivery: a webhook that is down and then up gets the alert once, one that stays down gets it
dead-lettered (AlertFailed final) until an admin retries, and an ``offline`` rule fires when a
mailbox stays failed longer than its limit. Sync and audit on a real nats-server, a real
Dovecot refusing a wrong password, a local HTTPS receiver."""

# ruff: noqa: F811 -- pytest fixtures imported from support modules are parameters here

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.natsserver import NatsServer
from services.sync.alerts_webhook import verify
from tests.integration.test_sync_support import (  # noqa: F401 -- fixtures
    SyncHarness,
    close_harness,
    open_harness,
    sync_env,
)
from tests.support.dovecot import Dovecot
from tests.support.stack import wait_until
from tests.support.sync_workers import stored_events
from tests.support.webhook import Hit, WebhookServer, webhook  # noqa: F401 -- fixture

pytestmark = [pytest.mark.connected]
SECRET = "s3cret-for-webhooks-only"


@pytest.fixture
async def harness(
    tmp_path: Path,
    nats_server: NatsServer,
    sync_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[SyncHarness]:
    for k, v in {
        "MAILROOM_SYNC_ALERT_POLL_S": "0.2",
        "MAILROOM_SYNC_ALERT_BACKOFF_BASE_S": "0.2",
        "MAILROOM_SYNC_ALERT_BACKOFF_MAX_S": "0.5",
        "MAILROOM_SYNC_ALERT_MAX_ATTEMPTS": "3",
        "MAILROOM_SYNC_ALERT_WEBHOOK_TIMEOUT_S": "2",
    }.items():
        monkeypatch.setenv(k, v)
    h = await open_harness(tmp_path, nats_server)
    try:
        yield h
    finally:
        await close_harness(h)


def rule(url: str, **over: Any) -> dict[str, Any]:
    return {
        "name": "auth",
        "kinds": ["auth_failed"],
        "webhook": {"url": url, "secret": SECRET},
        **over,
    }


async def test_rules_over_http(harness: SyncHarness) -> None:
    call = harness.stack.call
    body = rule("https://hooks.example.com/mailroom")
    r = await call("POST", "/v1/alerts/rules", json=body, subject="e1", role="employee")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for bad, field in [
        ({**body, "webhook": None}, "action"),
        ({**body, "kinds": ["nonsense"]}, "kinds"),
        ({**body, "kinds": ["offline"]}, "offline_after_s"),
        ({**body, "webhook": {"url": "ftp://x", "secret": SECRET}}, "url"),
        ({**body, "webhook": {"url": "https://x.example", "secret": "short"}}, "secret"),
        ({**body, "email": {"mailbox_id": "m1", "to": ["not an address"]}}, "address"),
        ({**body, "throttle_s": -1}, "throttle_s"),
    ]:
        r = await call("POST", "/v1/alerts/rules", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert set(r.json()["error"]) >= {"code", "message"} and field in r.text
    r = await call(
        "POST", "/v1/alerts/rules", json={**body, "webhook": {"url": body["webhook"]["url"]}}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "secret_required"

    r = await call("POST", "/v1/alerts/rules", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["webhook"] == {"url": body["webhook"]["url"], "secret_set": True}
    assert SECRET not in r.text
    again = await call("POST", "/v1/alerts/rules", json=body)  # a replay: the same rule
    assert again.status_code == 200 and again.json()["id"] == created["id"]
    other = await call("POST", "/v1/alerts/rules", json={**body, "throttle_s": 60})
    assert other.status_code == 409 and other.json()["error"]["code"] == "rule_exists"

    rule_id = created["id"]
    changed = {**body, "throttle_s": 60, "webhook": {"url": body["webhook"]["url"]}}
    r = await call("PUT", f"/v1/alerts/rules/{rule_id}", json=changed)
    assert r.status_code == 200 and r.json()["throttle_s"] == 60
    assert r.json()["webhook"]["secret_set"] is True and r.json()["version"] == 2
    r = await call("PUT", f"/v1/alerts/rules/{rule_id}", json=changed)  # no change: no event
    assert r.json()["version"] == 2
    r = await call("GET", "/v1/alerts/rules")
    assert [x["id"] for x in r.json()["items"]] == [rule_id] and SECRET not in r.text
    r = await call("GET", f"/v1/alerts/rules/{rule_id}", tenant="globex")
    assert r.status_code == 404 and r.json()["error"]["code"] == "rule_not_found"
    assert (await call("DELETE", f"/v1/alerts/rules/{rule_id}", tenant="globex")).status_code == 404
    assert (await call("DELETE", f"/v1/alerts/rules/{rule_id}")).status_code == 204
    assert (await call("GET", f"/v1/alerts/rules/{rule_id}")).status_code == 404

    async def trail() -> list[str] | None:
        events = await stored_events(
            harness.stack.host.runtime.js, f"mailroom.acme.sync.alert_rule.{rule_id}.*"
        )
        return [e.event_name for e in events] if len(events) >= 3 else None

    assert await wait_until(trail) == ["AlertRuleSet", "AlertRuleSet", "AlertRuleDeleted"]
    assert not [e for e in harness.seen if SECRET in e.body().decode()]


async def refused_account(harness: SyncHarness, dovecot: Dovecot) -> str:
    user, password = dovecot.new_user("alert")
    account = await harness.add_account(dovecot, user, password + "-wrong", interval=30)
    await harness.wait_state(account, "auth_failed")
    return account


async def test_a_webhook_down_then_up_gets_the_alert_once(
    harness: SyncHarness, dovecot: Dovecot, webhook: WebhookServer
) -> None:
    webhook.fail_next = 2  # down for the first two attempts
    r = await harness.stack.call("POST", "/v1/alerts/rules", json=rule(f"{webhook.url}/a"))
    assert r.status_code == 201, r.text
    account = await refused_account(harness, dovecot)
    [hit] = await delivered(webhook)
    assert [h.status for h in webhook.hits] == [503, 503, 200]
    assert len({h.headers["mailroom-alert-id"] for h in webhook.hits}) == 1  # one alert
    assert verify(
        SECRET.encode(),
        hit.headers["mailroom-timestamp"],
        hit.body,
        hit.headers["mailroom-signature"],
    )
    failed = await harness.wait_event("AlertFailed", hit.headers["mailroom-alert-id"], count=2)
    assert [e.data["attempt"] for e in failed] == [1, 2] and failed[0].data["retry_in_s"]
    sent = await harness.wait_event("AlertSent", hit.headers["mailroom-alert-id"])
    assert sent[0].data["mailbox_id"] == account and sent[0].data["attempt"] == 3
    r = await harness.stack.call("GET", "/v1/alerts/deliveries")
    [d] = r.json()["items"]
    assert d["state"] == "sent" and d["attempts"] == 3 and d["mailbox_id"] == account


async def test_a_webhook_that_stays_down_is_dead_lettered_until_retried(
    harness: SyncHarness, dovecot: Dovecot, webhook: WebhookServer
) -> None:
    webhook.status = 500
    r = await harness.stack.call("POST", "/v1/alerts/rules", json=rule(f"{webhook.url}/b"))
    assert r.status_code == 201, r.text
    await refused_account(harness, dovecot)

    async def dead() -> list[Any] | None:
        r = await harness.stack.call("GET", "/v1/alerts/deliveries", params={"state": "dead"})
        return r.json()["items"] or None

    found = await wait_until(dead, timeout=15)
    assert found is not None
    [d] = found
    assert d["attempts"] == 3 and d["last_error"] == "HTTP 500"
    final = await harness.wait_event("AlertFailed", d["id"], lambda x: x["final"])
    assert final[0].data["error"] == "HTTP 500"
    assert len(webhook.hits) == 3
    webhook.status = 200
    r = await harness.stack.call("POST", f"/v1/alerts/deliveries/{d['id']}/retry")
    assert r.status_code == 202 and r.json()["state"] == "pending"
    await wait_until(lambda: _some(webhook.delivered(), 1), timeout=10)
    await harness.wait_event("AlertSent", d["id"])
    r = await harness.stack.call("POST", f"/v1/alerts/deliveries/{d['id']}/retry")
    assert r.status_code == 409 and r.json()["error"]["code"] == "alert_delivered"


async def test_an_account_failed_longer_than_the_limit_raises_offline_once(
    harness: SyncHarness, dovecot: Dovecot, webhook: WebhookServer
) -> None:
    body = rule(f"{webhook.url}/c", name="down", kinds=["offline"], offline_after_s=1)
    r = await harness.stack.call("POST", "/v1/alerts/rules", json=body)
    assert r.status_code == 201, r.text
    account = await refused_account(harness, dovecot)
    [hit] = await delivered(webhook)
    doc = hit.json()
    assert doc["kind"] == "offline" and doc["state"] == "auth_failed"
    assert doc["mailbox"]["id"] == account
    await harness.force(account)  # failing on: the same outage, no second alert
    await harness.wait_event("SyncFailed", account, count=2)
    await asyncio.sleep(1.5)  # several dispatcher rounds
    assert len(webhook.hits) == 1


async def _some(items: list[Any], n: int) -> list[Any] | None:
    return items if len(items) >= n else None


async def delivered(webhook: WebhookServer, n: int = 1) -> list[Hit]:
    hits = await wait_until(lambda: _some(webhook.delivered(), n), timeout=15)
    assert hits is not None
    return hits
