"""Alert rules' commands, and the reactor that turns sync events into alert deliveries.

* :class:`AlertCommands`: create, change and delete a tenant's rules; each change commits with
  its event (``AlertRuleSet`` / ``AlertRuleDeleted``, aggregate ``alert_rule``) in one
  transaction. Setting the same rule again changes nothing and emits nothing.
* :func:`alert_reactor`: a durable consumer of the mailboxes' events (``sync-alerts``,
  ``mailroom.*.sync.mailbox.>``). In its transaction, with its inbox rows, it opens incidents,
  throttles (one alert per rule, mailbox and kind per ``throttle_s``), arms outage timers
  (``offline``) and queues one delivery per channel (``sync_alert_deliveries``); a recovery
  closes the incidents and queues a recovery notice. The dispatcher
  (:mod:`services.sync.alerts_delivery`) delivers them. A reaction, not a projection: never
  rebuilt (that would alert again).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Projection
from libs.common.errors import Conflict, MailroomError, NotFound
from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.sync import (
    AccountStatusChanged,
    AlertNotice,
    AlertRuleDeleted,
    MailMissingDetected,
    SyncFailed,
    SyncRecovered,
)
from libs.common.ids import new_id
from libs.common.store.database import Database
from libs.common.subjects import PREFIX
from services.sync.alerts_repository import AlertRepository
from services.sync.alerts_rules import Rule, RuleIn, body, payload, rule_event, throttled
from services.sync.alerts_webhook import SecretBox

ALERTS_DURABLE = "sync-alerts"
ALERTS_FILTER = f"{PREFIX}.*.sync.mailbox.>"
FAILED_STATES = ("offline", "auth_failed", "tls_error")


def _secret_required() -> MailroomError:
    return MailroomError(
        "webhook.secret is required for a new webhook", code="secret_required", status=422
    )


class AlertCommands:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    async def _append(
        self, tx: Any, ctx: CommandContext, rule_id: str, event: Event
    ) -> tuple[Envelope, int]:
        version = await self.db.store.version(tx.conn, rule_id)
        env = Envelope.wrap(event, ctx, aggregate_id=rule_id, aggregate_version=version + 1)
        await tx.append([env], expected_version=version)
        return env, version + 1

    async def create(self, ctx: CommandContext, rule: RuleIn) -> tuple[Rule, bool]:
        """A new rule; the same rule (by name, with the same content) again is a replay."""
        async with self.db.transaction() as tx:
            repo = AlertRepository(tx.conn, ctx.tenant_id)
            known = await repo.rule_named(rule.name)
            if known is not None:
                if await self._same(repo, known, rule):
                    return known, False
                raise Conflict(
                    f"a rule named {rule.name!r} exists (change it with PUT)",
                    code="rule_exists",
                    details={"id": known.rule_id},
                )
            if rule.webhook is not None and rule.webhook.secret is None:
                raise _secret_required()
            rule_id = new_id()
            await self._write(tx, repo, ctx, rule_id, rule, None, 0)
            stored = await repo.rule(rule_id)
        assert stored is not None
        return stored, True

    async def replace(self, ctx: CommandContext, rule_id: str, rule: RuleIn) -> Rule:
        async with self.db.transaction() as tx:
            repo = AlertRepository(tx.conn, ctx.tenant_id)
            known = await repo.rule(rule_id)
            if known is None:
                raise NotFound(f"no alert rule {rule_id}", code="rule_not_found")
            if await self._same(repo, known, rule):
                return known
            other = await repo.rule_named(rule.name)
            if other is not None and other.rule_id != rule_id:
                raise Conflict(f"a rule named {rule.name!r} exists", code="rule_exists")
            sealed, secret_version = await repo.sealed_secret(rule_id)
            if rule.webhook is not None and rule.webhook.secret is None and sealed is None:
                raise _secret_required()
            await self._write(tx, repo, ctx, rule_id, rule, sealed, secret_version)
            stored = await repo.rule(rule_id)
        assert stored is not None
        return stored

    async def _same(self, repo: AlertRepository, known: Rule, rule: RuleIn) -> bool:
        secret_version = known.spec.webhook_secret_version
        if rule_event(rule, secret_version) != known.spec:
            return False
        if rule.webhook is None or rule.webhook.secret is None:
            return True
        sealed, _ = await repo.sealed_secret(known.rule_id)
        given = rule.webhook.secret.get_secret_value().encode()
        return sealed is not None and self.box.open(known.tenant_id, known.rule_id, sealed) == given

    async def _write(
        self,
        tx: Any,
        repo: AlertRepository,
        ctx: CommandContext,
        rule_id: str,
        rule: RuleIn,
        sealed: bytes | None,
        secret_version: int,
    ) -> None:
        if rule.webhook is None:
            sealed, secret_version = None, secret_version
        elif rule.webhook.secret is not None:
            secret = rule.webhook.secret.get_secret_value()
            sealed, secret_version = (
                self.box.seal(ctx.tenant_id, rule_id, secret),
                secret_version + 1,
            )
        event = rule_event(rule, secret_version)
        _, version = await self._append(tx, ctx, rule_id, event)
        now = datetime.now(UTC)
        await repo.put_rule(rule_id, event, version, now, sealed, secret_version)

    async def delete(self, ctx: CommandContext, rule_id: str) -> None:
        async with self.db.transaction() as tx:
            repo = AlertRepository(tx.conn, ctx.tenant_id)
            known = await repo.rule(rule_id)
            if known is None:
                raise NotFound(f"no alert rule {rule_id}", code="rule_not_found")
            await self._append(tx, ctx, rule_id, AlertRuleDeleted(name=known.spec.name))
            await repo.delete_rule(rule_id)


# --- reacting to the mailboxes' events ---------------------------------------------------
def delivery_rows(
    rule: Rule,
    account_id: str,
    kind: AlertNotice,
    doc: dict[str, Any],
    env: Envelope | None,
    now: datetime,
) -> list[dict[str, Any]]:
    rows = []
    for channel in rule.channels():
        alert_id = new_id()
        rows.append(
            {
                "alert_id": alert_id,
                "rule_id": rule.rule_id,
                "account_id": account_id,
                "kind": kind,
                "channel": channel,
                "payload": body({**doc, "id": alert_id}).decode(),
                "state": "pending",
                "attempts": 0,
                "next_at": now,
                "correlation_id": env.correlation_id if env is not None else None,
                "causation_id": env.id if env is not None else None,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


async def fire(
    repo: AlertRepository,
    rule: Rule,
    account_id: str,
    kind: AlertNotice,
    at: datetime,
    env: Envelope | None,
    **facts: Any,
) -> int:
    """Queue an alert unless throttled; returns the deliveries queued."""
    state = (await repo.states(rule.rule_id, account_id)).get(kind)
    if state is not None and throttled(state.last_alert_at, at, rule.spec.throttle_s):
        return 0
    address, _, _ = await repo.account_facts(account_id)
    doc = payload(
        alert_id="",
        rule=rule,
        account_id=account_id,
        address=address,
        kind=kind,
        occurred_at=at,
        event_id=env.id if env is not None else None,
        **facts,
    )
    rows = delivery_rows(rule, account_id, kind, doc, env, datetime.now(UTC))
    await repo.add_deliveries(rows)
    await repo.put_state(rule.rule_id, account_id, kind, last_alert_at=at, open=True)
    return len(rows)


async def react(conn: AsyncConnection, env: Envelope) -> int:
    name = env.event_name
    if name not in ("SyncFailed", "SyncRecovered", "MailMissingDetected", "AccountStatusChanged"):
        return 0
    event = env.event()
    repo = AlertRepository(conn, env.tenant_id)
    account_id, at, queued = env.aggregate_id, env.time, 0
    if isinstance(event, AccountStatusChanged):
        if event.status == "disabled":
            await repo.close_account(account_id)
        return 0
    for rule in await repo.rules():
        if not rule.covers(account_id):
            continue
        if isinstance(event, SyncFailed):
            for kind in rule.failure_kinds(event.reason_class):
                facts = {"reason_class": event.reason_class, "detail": event.detail}
                queued += await fire(repo, rule, account_id, kind, at, env, **facts)
            if "offline" in rule.spec.kinds:
                await _arm(repo, rule, account_id, at)
        elif isinstance(event, MailMissingDetected) and rule.wants_missing(event.kind):
            detail = f"{event.kind} in {event.folder}: {event.detail}"
            queued += await fire(repo, rule, account_id, "mail_missing", at, env, detail=detail)
        elif isinstance(event, SyncRecovered):
            queued += await _recover(repo, rule, account_id, at, env, event.down_since)
    return queued


async def _arm(repo: AlertRepository, rule: Rule, account_id: str, at: datetime) -> None:
    state = (await repo.states(rule.rule_id, account_id)).get("offline")
    if state is not None and (state.open or state.due_at is not None):
        return  # this outage is already alerted, or its timer runs
    _, _, down_since = await repo.account_facts(account_id)
    assert rule.spec.offline_after_s is not None
    due = (down_since or at) + timedelta(seconds=rule.spec.offline_after_s)
    await repo.put_state(rule.rule_id, account_id, "offline", due_at=due)


async def _recover(
    repo: AlertRepository,
    rule: Rule,
    account_id: str,
    at: datetime,
    env: Envelope,
    down_since: str,
) -> int:
    states = await repo.states(rule.rule_id, account_id)
    opened = sorted(k for k, s in states.items() if s.open and k != "mail_missing")
    for kind, s in states.items():
        if s.open or s.due_at is not None:
            await repo.put_state(rule.rule_id, account_id, kind, open=False, due_at=None)
    if not opened or not rule.spec.notify_recovery:
        return 0
    address, state, _ = await repo.account_facts(account_id)
    doc = payload(
        alert_id="",
        rule=rule,
        account_id=account_id,
        address=address,
        kind="recovered",
        occurred_at=at,
        event_id=env.id,
        detail=f"down since {down_since}",
        state=state,
        recovered=opened,
    )
    rows = delivery_rows(rule, account_id, "recovered", doc, env, datetime.now(UTC))
    await repo.add_deliveries(rows)
    return len(rows)


def alert_reactor() -> Projection:
    """The consumer; wire the dispatcher's ``wake`` to its ``on_applied`` (after commit)."""

    async def apply(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        for env in events:
            await react(conn, env)

    return Projection(ALERTS_DURABLE, ALERTS_FILTER, apply)
