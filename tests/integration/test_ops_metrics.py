"""``GET /metrics``: Prometheus names and values after some traffic."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.common import metrics
from libs.common.leases import lease_credential
from libs.common.nats import connect
from libs.common.natsserver import NatsServer
from tests.support.registry import audit_types, create, imap_account, stop
from tests.support.stack import Stack, start_stack, wait_until

pytestmark = [pytest.mark.connected]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(s: Stack) -> tuple[str, Samples]:
    r = await s.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return r.text, out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_after_traffic(tmp_path: Path, nats_server: NatsServer) -> None:
    s = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    nc = await connect(nats_server.url, name="metrics-test")
    try:
        _, before = await scrape(s)
        added = "registry.account.AccountAdded"
        account = await create(s, imap_account())
        for _ in range(3):
            r = await s.call("GET", f"/v1/accounts/{account['id']}")
            assert r.status_code == 200
        assert (await s.call("GET", "/v1/accounts/missing")).status_code == 404
        await audit_types(s, account["id"], 1)
        await lease_credential(nc, "acme", account["id"], "sync", "metrics")
        await nc.publish("mailroom.acme.registry.account.x.AccountAdded", b"garbage")
        metrics.set_sync_states({"ok": 3, "auth_failed": 1})
        metrics.set_sync_states({"ok": 4})
        metrics.record_send(True)
        metrics.record_send(False)

        async def settled() -> tuple[str, Samples] | None:
            text, samples = await scrape(s)
            dead = value(samples, "mailroom_dead_letter_messages", durable="audit")
            lag = value(samples, "mailroom_consumer_lag_messages", durable="audit")
            outbox = value(samples, "mailroom_outbox_depth", service="registry")
            acks = value(samples, "mailroom_consumer_ack_pending_messages", durable="audit")
            settled = dead == 1 and lag == 0 and outbox == 0 and acks == 0
            return (text, samples) if settled else None

        text, after = await wait_until(settled, timeout=30)
    finally:
        await nc.close()
        await stop(s)

    def delta(name: str, **labels: str) -> float:  # process-wide: other tests count too
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    route = "/v1/accounts/{account_id}"
    requests = "mailroom_http_requests_total"
    assert delta(requests, method="POST", route="/v1/accounts", status="201") == 1
    assert delta(requests, method="GET", route=route, status="200") == 3
    assert delta(requests, method="GET", route=route, status="404") == 1
    latency = "mailroom_http_request_duration_seconds"
    assert delta(f"{latency}_count", method="GET", route=route) == 4
    assert delta(f"{latency}_bucket", method="GET", route=route, le="+Inf") == 4
    assert account["id"] not in text  # route templates, never raw paths or ids
    assert delta("mailroom_events_published_total", event=added) == 1
    applied = value(after, "mailroom_events_applied_total", durable="audit")
    assert applied is not None and applied >= 2  # AccountAdded, CredentialAccessed
    assert value(after, "mailroom_events_dead_lettered_total", durable="audit") == 1
    assert value(after, "mailroom_consumer_last_applied_timestamp_seconds", durable="audit")
    assert delta("mailroom_credential_leases_total", service="sync", outcome="granted") == 1
    assert value(after, "mailroom_sync_accounts", state="ok") == 4
    assert value(after, "mailroom_sync_accounts", state="auth_failed") == 0
    assert delta("mailroom_sends_total", outcome="sent") == 1
    assert delta("mailroom_sends_total", outcome="failed") == 1
    for name in ("mailroom_http_requests", "mailroom_events_published", "mailroom_events_applied"):
        assert f"# TYPE {name}_total counter" in text
    assert "# TYPE mailroom_consumer_lag_messages gauge" in text
    assert "# TYPE mailroom_http_request_duration_seconds histogram" in text
