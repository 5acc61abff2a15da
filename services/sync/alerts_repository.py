"""Every query of the alert tables, scoped to one tenant — except :func:`due_deliveries` and
:func:`due_timers`, the dispatcher's scans over every tenant (internal, never an answer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.sync import AlertRuleSet
from services.sync.alerts_rules import Rule
from services.sync.models import as_utc, utc
from services.sync.tables import accounts, alert_deliveries, alert_rules, alert_state, status


@dataclass(frozen=True)
class Delivery:
    alert_id: str
    tenant_id: str
    rule_id: str
    account_id: str
    kind: str
    channel: str
    payload: str
    state: str
    attempts: int
    next_at: datetime
    last_error: str | None
    correlation_id: str | None
    causation_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StateRow:
    rule_id: str
    account_id: str
    kind: str
    last_alert_at: datetime | None
    open: bool
    due_at: datetime | None


def _delivery(r: Any) -> Delivery:
    return Delivery(
        r.alert_id,
        r.tenant_id,
        r.rule_id,
        r.account_id,
        r.kind,
        r.channel,
        r.payload,
        r.state,
        int(r.attempts),
        as_utc(r.next_at),
        r.last_error,
        r.correlation_id,
        r.causation_id,
        as_utc(r.created_at),
        as_utc(r.updated_at),
    )


def _rule(r: Any) -> Rule:
    return Rule(
        tenant_id=r.tenant_id,
        rule_id=r.rule_id,
        spec=AlertRuleSet.model_validate_json(r.spec),
        has_secret=r.webhook_secret is not None,
        version=int(r.version),
        updated_at=as_utc(r.updated_at),
    )


class AlertRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    # --- rules ------------------------------------------------------------------------------
    def _r(self, rule_id: str) -> Any:
        return and_(alert_rules.c.tenant_id == self.tenant_id, alert_rules.c.rule_id == rule_id)

    async def rules(self) -> list[Rule]:
        q = select(alert_rules).where(alert_rules.c.tenant_id == self.tenant_id)
        return [_rule(r) for r in await self.conn.execute(q.order_by(alert_rules.c.name))]

    async def rule(self, rule_id: str) -> Rule | None:
        r = (await self.conn.execute(select(alert_rules).where(self._r(rule_id)))).first()
        return _rule(r) if r else None

    async def rule_named(self, name: str) -> Rule | None:
        q = select(alert_rules).where(
            alert_rules.c.tenant_id == self.tenant_id, alert_rules.c.name == name
        )
        r = (await self.conn.execute(q)).first()
        return _rule(r) if r else None

    async def sealed_secret(self, rule_id: str) -> tuple[bytes | None, int]:
        q = select(alert_rules.c.webhook_secret, alert_rules.c.secret_version).where(
            self._r(rule_id)
        )
        r = (await self.conn.execute(q)).first()
        return (bytes(r[0]) if r and r[0] is not None else None), (int(r[1]) if r else 0)

    async def put_rule(
        self,
        rule_id: str,
        spec: AlertRuleSet,
        version: int,
        now: datetime,
        secret: bytes | None,
        secret_version: int,
    ) -> None:
        values = {
            "name": spec.name,
            "spec": spec.model_dump_json(),
            "webhook_secret": secret,
            "secret_version": secret_version,
            "version": version,
            "updated_at": now,
        }
        if not (
            await self.conn.execute(update(alert_rules).where(self._r(rule_id)), values)
        ).rowcount:
            await self.conn.execute(
                insert(alert_rules).values(tenant_id=self.tenant_id, rule_id=rule_id, **values)
            )

    async def delete_rule(self, rule_id: str) -> None:
        await self.conn.execute(delete(alert_rules).where(self._r(rule_id)))
        await self.conn.execute(
            delete(alert_state).where(
                alert_state.c.tenant_id == self.tenant_id, alert_state.c.rule_id == rule_id
            )
        )

    # --- incidents --------------------------------------------------------------------------
    def _s(self, rule_id: str, account_id: str, kind: str | None = None) -> Any:
        cond = and_(
            alert_state.c.tenant_id == self.tenant_id,
            alert_state.c.rule_id == rule_id,
            alert_state.c.account_id == account_id,
        )
        return cond if kind is None else and_(cond, alert_state.c.kind == kind)

    async def states(self, rule_id: str, account_id: str) -> dict[str, StateRow]:
        q = select(alert_state).where(self._s(rule_id, account_id))
        return {
            r.kind: StateRow(
                r.rule_id, r.account_id, r.kind, utc(r.last_alert_at), bool(r.open), utc(r.due_at)
            )
            for r in await self.conn.execute(q)
        }

    async def put_state(self, rule_id: str, account_id: str, kind: str, **values: Any) -> None:
        key = self._s(rule_id, account_id, kind)
        if not (await self.conn.execute(update(alert_state).where(key), values)).rowcount:
            values = {"open": False, **values}
            await self.conn.execute(
                insert(alert_state).values(
                    tenant_id=self.tenant_id,
                    rule_id=rule_id,
                    account_id=account_id,
                    kind=kind,
                    **values,
                )
            )

    async def take_timer(self, rule_id: str, account_id: str, due_at: datetime) -> bool:
        """Claim a due outage timer (one worker wins): it is cleared in this transaction."""
        done = await self.conn.execute(
            update(alert_state)
            .where(self._s(rule_id, account_id, "offline"), alert_state.c.due_at == due_at)
            .values(due_at=None)
        )
        return bool(done.rowcount)

    async def close_account(self, account_id: str) -> None:
        """The mailbox is disabled or deleted: no open incident, no timer."""
        await self.conn.execute(
            update(alert_state)
            .where(
                alert_state.c.tenant_id == self.tenant_id, alert_state.c.account_id == account_id
            )
            .values(open=False, due_at=None)
        )

    # --- what the alert is about ------------------------------------------------------------
    async def account_facts(self, account_id: str) -> tuple[str | None, str | None, Any]:
        """The mailbox's address, its sync state and since when it is down."""
        q = (
            select(accounts.c.address, status.c.state, status.c.down_since)
            .select_from(
                status.outerjoin(
                    accounts,
                    and_(
                        accounts.c.tenant_id == status.c.tenant_id,
                        accounts.c.account_id == status.c.account_id,
                    ),
                )
            )
            .where(status.c.tenant_id == self.tenant_id, status.c.account_id == account_id)
        )
        r = (await self.conn.execute(q)).first()
        if r is None:
            return None, None, None
        return r.address, r.state, utc(r.down_since)

    # --- deliveries -------------------------------------------------------------------------
    async def add_deliveries(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await self.conn.execute(
                insert(alert_deliveries), [{**r, "tenant_id": self.tenant_id} for r in rows]
            )

    def _d(self, alert_id: str) -> Any:
        return and_(
            alert_deliveries.c.tenant_id == self.tenant_id,
            alert_deliveries.c.alert_id == alert_id,
        )

    async def delivery(self, alert_id: str) -> Delivery | None:
        r = (await self.conn.execute(select(alert_deliveries).where(self._d(alert_id)))).first()
        return _delivery(r) if r else None

    async def deliveries(
        self, *, state: str | None = None, rule_id: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        q = select(alert_deliveries).where(alert_deliveries.c.tenant_id == self.tenant_id)
        if state is not None:
            q = q.where(alert_deliveries.c.state == state)
        if rule_id is not None:
            q = q.where(alert_deliveries.c.rule_id == rule_id)
        q = q.order_by(alert_deliveries.c.created_at.desc(), alert_deliveries.c.alert_id)
        return [_delivery(r) for r in await self.conn.execute(q.limit(limit))]

    async def claim(self, d: Delivery, until: datetime) -> bool:
        """Take a due delivery for ``until`` (one worker wins; a dead worker's claim runs out)."""
        done = await self.conn.execute(
            update(alert_deliveries)
            .where(
                self._d(d.alert_id),
                alert_deliveries.c.state == "pending",
                alert_deliveries.c.next_at == d.next_at,
            )
            .values(next_at=until)
        )
        return bool(done.rowcount)

    async def settle(self, alert_id: str, **values: Any) -> None:
        await self.conn.execute(update(alert_deliveries).where(self._d(alert_id)), values)


async def due_deliveries(conn: AsyncConnection, now: datetime, limit: int) -> list[Delivery]:
    q = (
        select(alert_deliveries)
        .where(alert_deliveries.c.state == "pending", alert_deliveries.c.next_at <= now)
        .order_by(alert_deliveries.c.next_at)
        .limit(limit)
    )
    return [_delivery(r) for r in await conn.execute(q)]


async def due_timers(conn: AsyncConnection, now: datetime, limit: int) -> list[Any]:
    q = (
        select(alert_state.c.tenant_id, alert_state.c.rule_id, alert_state.c.account_id)
        .add_columns(alert_state.c.due_at)
        .where(alert_state.c.due_at.is_not(None), alert_state.c.due_at <= now)
        .order_by(alert_state.c.due_at)
        .limit(limit)
    )
    return list(await conn.execute(q))
