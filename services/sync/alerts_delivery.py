"""The alert dispatcher: delivers queued alerts, on every sync worker, never silently dropped.

Each round it fires the outage timers that are due (``offline`` rules: the mailbox is still
failed ``offline_after_s`` after it went down) and delivers the due deliveries. A delivery is
claimed with a conditional update (one worker wins; the claim runs out if the worker dies),
sent, and settled with its event in one transaction: ``AlertSent``, or ``AlertFailed`` and a
retry after ``alert_backoff_base_s * 2^(n-1)`` (capped), until ``alert_max_attempts``; then it
is dead-lettered (``state=dead``, ``AlertFailed(final=true)``), listed by
``GET /v1/alerts/deliveries?state=dead`` and retried by an admin
(``POST /v1/alerts/deliveries/{id}/retry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.sync import AlertFailed, AlertSent
from libs.common.store.database import Database
from services.sync.alerts_handlers import FAILED_STATES, fire
from services.sync.alerts_repository import (
    AlertRepository,
    Delivery,
    due_deliveries,
    due_timers,
)
from services.sync.alerts_rules import backoff, email_text
from services.sync.alerts_webhook import Outcome, SecretBox, post_webhook, send_email
from services.sync.settings import SyncSettings

log = logging.getLogger("mailroom.sync.alerts")
ACTOR = "service:sync-alerts"
BATCH = 32


class AlertDispatcher:
    def __init__(self, db: Database, settings: SyncSettings, box: SecretBox) -> None:
        self.db = db
        self.settings = settings
        self.box = box
        self.nc: Any = None
        self.ssl_context: ssl.SSLContext = settings.ssl_context()
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0

    def wake(self) -> None:
        self._event.set()

    def start(self, nc: Any) -> None:
        self.nc = nc
        self._task = asyncio.create_task(self._run(), name="sync-alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.fire_timers()
                while await self.tick() == BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is briefly away: next round
                log.warning("alert dispatcher: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), self.settings.alert_poll_s)
            self._event.clear()

    # --- outage timers ----------------------------------------------------------------------
    async def fire_timers(self) -> None:
        now = datetime.now(UTC)
        async with self.db.read() as conn:
            due = await due_timers(conn, now, BATCH)
        for tenant_id, rule_id, account_id, due_at in due:
            async with self.db.write() as conn:
                repo = AlertRepository(conn, tenant_id)
                if not await repo.take_timer(rule_id, account_id, due_at):
                    continue  # another worker has it
                rule = await repo.rule(rule_id)
                _, state, down_since = await repo.account_facts(account_id)
                if rule is None or state not in FAILED_STATES or not rule.covers(account_id):
                    continue
                detail = f"{state} since {down_since.isoformat() if down_since else '?'}"
                await fire(repo, rule, account_id, "offline", now, None, detail=detail, state=state)
        if due:
            self.wake()

    # --- deliveries -------------------------------------------------------------------------
    async def tick(self) -> int:
        """Deliver what is due; return how many were looked at."""
        now = datetime.now(UTC)
        async with self.db.read() as conn:
            due = await due_deliveries(conn, now, BATCH)
        claim_s = max(self.settings.alert_send_timeout_s, self.settings.alert_webhook_timeout_s)
        for d in due:
            async with self.db.write() as conn:
                mine = await AlertRepository(conn, d.tenant_id).claim(
                    d, now + timedelta(seconds=claim_s + 30)
                )
            if mine:
                await self.deliver(d)
        return len(due)

    async def deliver(self, d: Delivery) -> None:
        try:
            outcome = await self._send(d)
        except Exception as exc:  # a bug or a broken row: a failed attempt, not a lost alert
            log.exception("alert %s: delivery failed", d.alert_id)
            outcome = Outcome(False, f"{type(exc).__name__}: {str(exc)[:200]}")
        await self._settle(d, outcome)

    async def _send(self, d: Delivery) -> Outcome:
        async with self.db.read() as conn:
            repo = AlertRepository(conn, d.tenant_id)
            rule = await repo.rule(d.rule_id)
            sealed, _ = await repo.sealed_secret(d.rule_id)
        if rule is None:
            return Outcome(False, "the rule was deleted")
        if d.channel == "webhook":
            url = rule.spec.webhook_url
            if url is None or sealed is None:
                return Outcome(False, "the rule has no webhook any more")
            if not url.startswith("https://") and not self.settings.alert_webhook_allow_http:
                return Outcome(False, "webhook URL is not https (MAILROOM_SYNC_ALERT_WEBHOOK_...)")
            secret = self.box.open(d.tenant_id, d.rule_id, sealed)
            return await post_webhook(
                url,
                secret,
                d.alert_id,
                d.payload.encode(),
                timeout=self.settings.alert_webhook_timeout_s,
                verify=self.ssl_context,
            )
        if not rule.spec.email_mailbox_id or not rule.spec.email_to or self.nc is None:
            return Outcome(False, "the rule has no email any more")
        subject, text = email_text(json.loads(d.payload))
        return await send_email(
            self.nc,
            tenant_id=d.tenant_id,
            mailbox_id=rule.spec.email_mailbox_id,
            alert_id=d.alert_id,
            to=rule.spec.email_to,
            subject=subject,
            text=text,
            correlation_id=d.correlation_id,
            timeout=self.settings.alert_send_timeout_s,
        )

    async def _settle(self, d: Delivery, outcome: Outcome) -> None:
        attempt = d.attempts + 1
        now = datetime.now(UTC)
        base = {
            "rule_id": d.rule_id,
            "mailbox_id": d.account_id,
            "kind": d.kind,
            "channel": d.channel,
            "attempt": attempt,
        }
        event: Event
        values: dict[str, Any] = {"attempts": attempt, "updated_at": now}
        if outcome.ok:
            event = AlertSent(**base, detail=outcome.detail)
            values.update(state="sent", last_error=None)
            self.sent += 1
        elif attempt >= self.settings.alert_max_attempts:
            event = AlertFailed(**base, error=outcome.detail, final=True)
            values.update(state="dead", last_error=outcome.detail[:500])
            self.failed += 1
            log.error("alert %s dead-lettered after %d attempts", d.alert_id, attempt)
        else:
            delay = backoff(
                attempt, self.settings.alert_backoff_base_s, self.settings.alert_backoff_max_s
            )
            event = AlertFailed(**base, error=outcome.detail, retry_in_s=delay)
            values.update(last_error=outcome.detail[:500], next_at=now + timedelta(seconds=delay))
            log.warning("alert %s: attempt %d failed: %s", d.alert_id, attempt, outcome.detail)
        ctx = CommandContext(d.tenant_id, ACTOR, d.correlation_id or d.alert_id, d.causation_id)
        async with self.db.transaction() as tx:
            version = await self.db.store.version(tx.conn, d.alert_id)
            env = Envelope.wrap(event, ctx, aggregate_id=d.alert_id, aggregate_version=version + 1)
            await AlertRepository(tx.conn, d.tenant_id).settle(d.alert_id, **values)
            await tx.append([env])
