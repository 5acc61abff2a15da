"""Prometheus metrics: ``GET /metrics`` on every host (text exposition format).

Process-wide counters and gauges live in the default registry; what belongs to one host (its
consumers' lag and counts, its outboxes, the dead letters of its durables) is read when
``/metrics`` is scraped (:class:`HostMetrics`). Label values are bounded: route templates, event
templates (``registry.account.AccountAdded``), durable and service names — never ids.

Services set their own figures through the objects here, e.g. sync::

    from libs.common import metrics
    metrics.set_sync_states({"ok": 120, "auth_failed": 2})    # or metrics.sync_state_gauge
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from libs.common.subjects import DLQ_PREFIX, DLQ_STREAM, STREAM, SubjectError, parse_subject

if TYPE_CHECKING:
    from libs.common.service import Service

log = logging.getLogger("mailroom.metrics")

__all__ = [
    "CONTENT_TYPE_LATEST",
    "HostMetrics",
    "credential_leases",
    "events_published",
    "http_request_duration",
    "http_requests",
    "record_lease",
    "record_send",
    "sends",
    "set_sync_states",
    "sync_state_gauge",
]

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

http_requests = Counter(
    "mailroom_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
http_request_duration = Histogram(
    "mailroom_http_request_duration_seconds",
    "HTTP request latency, by method and route template.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
events_published = Counter(
    "mailroom_events_published_total",
    "Events the outbox relays published to JetStream, by event template.",
    ["event"],
)
credential_leases = Counter(
    "mailroom_credential_leases_total",
    "Credential lease requests answered by the registry, by requesting service and outcome "
    "(granted, or the refusal code).",
    ["service", "outcome"],
)
sends = Counter(
    "mailroom_sends_total",
    "Messages the sender tried to send, by outcome (sent, failed).",
    ["outcome"],
)
sync_state_gauge = Gauge(
    "mailroom_sync_accounts",
    "Accounts per sync state (set by the sync service).",
    ["state"],
)


def event_template(subject: str) -> str:
    """``registry.account.AccountAdded`` for an event subject (``other`` for anything else)."""
    try:
        return parse_subject(subject).template
    except SubjectError:
        return "other"


def count_published(subjects: Iterable[str]) -> None:
    counts: dict[str, int] = {}
    for s in subjects:
        t = event_template(s)
        counts[t] = counts.get(t, 0) + 1
    for t, n in counts.items():
        events_published.labels(event=t).inc(n)


def record_lease(service: str, outcome: str) -> None:
    """One lease answered: ``outcome`` is ``granted`` or the refusal code."""
    known = service if service in ("sync", "sender") else "other"
    credential_leases.labels(service=known, outcome=outcome[:40]).inc()


def record_send(ok: bool) -> None:
    sends.labels(outcome="sent" if ok else "failed").inc()


def set_sync_states(counts: Mapping[str, int]) -> None:
    """Set every state's account count; states seen before but absent now drop to 0."""
    seen = {labels[0] for labels in _gauge_labels(sync_state_gauge)}
    for state in seen - set(counts):
        sync_state_gauge.labels(state=state).set(0)
    for state, n in counts.items():
        sync_state_gauge.labels(state=state).set(n)


def _gauge_labels(g: Gauge) -> list[tuple[str, ...]]:
    return [tuple(k) for k in g._metrics]  # prometheus_client keeps children by label values


# --- per host, read on scrape ---------------------------------------------------------------
@dataclass
class _Snapshot:
    lag: dict[str, tuple[int, int]] = field(default_factory=dict)  # durable: (pending, acks)
    outbox: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)


class HostMetrics(Collector):
    """What one host's services report: read from JetStream and the databases on scrape."""

    def __init__(self, services: Sequence[Service], js: Any = None, timeout: float = 2.0) -> None:
        self.services = services
        self.js = js
        self.timeout = timeout
        self._snap = _Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def refresh(self) -> None:
        snap = _Snapshot()
        durables = [c.name for s in self.services for c in s.consumers]
        if self.js is not None:
            for durable in durables:
                try:
                    info = await self.js.consumer_info(STREAM, durable, timeout=self.timeout)
                    snap.lag[durable] = (int(info.num_pending or 0), int(info.num_ack_pending or 0))
                except Exception as exc:  # not created yet, NATS down: leave it out
                    log.debug("consumer info %s: %s", durable, exc)
            try:
                info = await asyncio.wait_for(
                    self.js.stream_info(DLQ_STREAM, subjects_filter=f"{DLQ_PREFIX}.>"),
                    self.timeout,
                )
                per_subject = info.state.subjects or {}
                for durable in durables:
                    snap.dead_letters[durable] = int(per_subject.get(f"{DLQ_PREFIX}.{durable}", 0))
            except Exception as exc:
                log.debug("dead-letter stream info: %s", exc)
        for svc in self.services:
            for hook in svc.metrics_hooks:
                try:
                    await asyncio.wait_for(hook(), self.timeout)
                except Exception as exc:
                    log.debug("metrics hook of %s: %s", svc.name, exc)
            if svc.relay is not None:
                try:
                    snap.outbox[svc.name] = await asyncio.wait_for(svc.relay.depth(), self.timeout)
                except Exception as exc:
                    log.debug("outbox depth %s: %s", svc.name, exc)
        self._snap = snap

    def collect(self) -> Iterable[Metric]:
        consumers = [c for s in self.services for c in s.consumers]
        counts = {
            "applied": ("mailroom_events_applied", "Events applied by a durable consumer."),
            "duplicates": (
                "mailroom_events_duplicate",
                "Redelivered or duplicated events a consumer found already applied.",
            ),
            "retried": ("mailroom_events_retried", "Failed events nacked for a retry."),
            "dead_lettered": (
                "mailroom_events_dead_lettered",
                "Events a consumer sent to the dead-letter stream.",
            ),
        }
        for attr, (name, doc) in counts.items():
            fam = CounterMetricFamily(name, doc, labels=["durable"])
            for c in consumers:
                fam.add_metric([c.name], float(getattr(c.stats, attr)))
            yield fam
        last = GaugeMetricFamily(
            "mailroom_consumer_last_applied_timestamp_seconds",
            "When a consumer last applied an event (Unix time).",
            labels=["durable"],
        )
        for c in consumers:
            if c.stats.last_applied_at is not None:
                last.add_metric([c.name], c.stats.last_applied_at.timestamp())
        yield last
        lag = GaugeMetricFamily(
            "mailroom_consumer_lag_messages",
            "Events in the stream a durable consumer has not been delivered yet (num_pending).",
            labels=["durable"],
        )
        pending = GaugeMetricFamily(
            "mailroom_consumer_ack_pending_messages",
            "Events delivered to a durable consumer and not acknowledged yet.",
            labels=["durable"],
        )
        for durable, (n, acks) in sorted(self._snap.lag.items()):
            lag.add_metric([durable], n)
            pending.add_metric([durable], acks)
        yield lag
        yield pending
        outbox = GaugeMetricFamily(
            "mailroom_outbox_depth",
            "Committed events waiting in a service's outbox to be published.",
            labels=["service"],
        )
        for svc, n in sorted(self._snap.outbox.items()):
            outbox.add_metric([svc], n)
        yield outbox
        dlq = GaugeMetricFamily(
            "mailroom_dead_letter_messages",
            "Messages in the dead-letter stream, by the durable that gave them up.",
            labels=["durable"],
        )
        for durable, n in sorted(self._snap.dead_letters.items()):
            dlq.add_metric([durable], n)
        yield dlq

    async def exposition(self) -> bytes:
        """The text for ``GET /metrics``: process-wide metrics, then this host's."""
        await self.refresh()
        return bytes(generate_latest(REGISTRY) + generate_latest(self.registry))
