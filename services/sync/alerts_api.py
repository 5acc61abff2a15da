"""Alert rules over HTTP (tenant admins only; the tenant comes from the token).

| endpoint | what |
| --- | --- |
| ``POST /v1/alerts/rules`` | a new rule (201); the same rule again (same name and content): 200 |
| ``GET /v1/alerts/rules``, ``GET /v1/alerts/rules/{id}`` | the tenant's rules |
| ``PUT /v1/alerts/rules/{id}`` | replace a rule (the webhook secret stays when omitted) |
| ``DELETE /v1/alerts/rules/{id}`` | 204 |
| ``GET /v1/alerts/deliveries?state=&rule_id=&limit=`` | alerts queued, sent, dead-lettered |
| ``POST /v1/alerts/deliveries/{id}/retry`` | a dead-lettered alert once more |

A webhook's secret is write-only: answers say ``secret_set`` and never show it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from libs.common.auth import Principal
from libs.common.errors import Conflict, Forbidden, NotFound
from libs.common.events.envelope import CommandContext
from libs.common.events.sync import AlertKind, FailureClass, MissingKind
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.sync.alerts_delivery import AlertDispatcher
from services.sync.alerts_handlers import AlertCommands
from services.sync.alerts_repository import AlertRepository, Delivery
from services.sync.alerts_rules import EmailAction, Rule, RuleIn


class WebhookOut(BaseModel):
    url: str
    secret_set: bool


class RuleOut(BaseModel):
    id: str
    name: str
    enabled: bool
    kinds: list[AlertKind]
    reason_classes: list[FailureClass]
    missing_kinds: list[MissingKind]
    offline_after_s: int | None
    mailboxes: list[str]
    email: EmailAction | None
    webhook: WebhookOut | None
    throttle_s: int
    notify_recovery: bool
    version: int
    updated_at: datetime


class RuleList(BaseModel):
    items: list[RuleOut]


class DeliveryOut(BaseModel):
    id: str
    rule_id: str
    mailbox_id: str
    kind: str
    channel: str
    state: Literal["pending", "sent", "dead"]
    attempts: int
    next_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class DeliveryList(BaseModel):
    items: list[DeliveryOut]


def rule_out(r: Rule) -> RuleOut:
    s = r.spec
    email = (
        EmailAction(mailbox_id=s.email_mailbox_id, to=s.email_to)
        if s.email_mailbox_id and s.email_to
        else None
    )
    return RuleOut(
        id=r.rule_id,
        name=s.name,
        enabled=s.enabled,
        kinds=s.kinds,
        reason_classes=s.reason_classes,
        missing_kinds=s.missing_kinds,
        offline_after_s=s.offline_after_s,
        mailboxes=s.mailboxes,
        email=email,
        webhook=WebhookOut(url=s.webhook_url, secret_set=r.has_secret) if s.webhook_url else None,
        throttle_s=s.throttle_s,
        notify_recovery=s.notify_recovery,
        version=r.version,
        updated_at=r.updated_at,
    )


def delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.alert_id,
        rule_id=d.rule_id,
        mailbox_id=d.account_id,
        kind=d.kind,
        channel=d.channel,
        state=d.state,
        attempts=d.attempts,
        next_at=d.next_at if d.state == "pending" else None,
        last_error=d.last_error,
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


def _admin(caller: Principal) -> CommandContext:
    if not caller.is_admin:
        raise Forbidden("only tenant admins manage alert rules", code="forbidden")
    return CommandContext(caller.tenant_id, caller.actor)


def build_alerts_router(
    db: Database, commands: AlertCommands, dispatcher: AlertDispatcher
) -> APIRouter:
    r = APIRouter(prefix="/v1/alerts", tags=["alerts"], responses=ERRORS)  # type: ignore[arg-type]

    @r.post("/rules", status_code=201, response_model=RuleOut)
    async def create(caller: Caller, rule: RuleIn) -> Response:
        """A new rule. Posting the same rule again (same name and content) answers it (200)."""
        ctx = _admin(caller)
        stored, created = await commands.create(ctx, rule)
        doc = rule_out(stored).model_dump(mode="json")
        return JSONResponse(doc, status_code=201 if created else 200)

    @r.get("/rules", response_model=RuleList)
    async def list_rules(caller: Caller) -> RuleList:
        _admin(caller)
        async with db.read() as conn:
            rules = await AlertRepository(conn, caller.tenant_id).rules()
        return RuleList(items=[rule_out(x) for x in rules])

    @r.get("/rules/{rule_id}", response_model=RuleOut)
    async def get_rule(caller: Caller, rule_id: str) -> RuleOut:
        _admin(caller)
        async with db.read() as conn:
            rule = await AlertRepository(conn, caller.tenant_id).rule(rule_id)
        if rule is None:
            raise NotFound(f"no alert rule {rule_id}", code="rule_not_found")
        return rule_out(rule)

    @r.put("/rules/{rule_id}", response_model=RuleOut)
    async def replace(caller: Caller, rule_id: str, rule: RuleIn) -> RuleOut:
        return rule_out(await commands.replace(_admin(caller), rule_id, rule))

    @r.delete("/rules/{rule_id}", status_code=204)
    async def delete(caller: Caller, rule_id: str) -> Response:
        await commands.delete(_admin(caller), rule_id)
        return Response(status_code=204)

    @r.get("/deliveries", response_model=DeliveryList)
    async def deliveries(
        caller: Caller,
        state: Literal["pending", "sent", "dead"] | None = None,
        rule_id: str | None = None,
        limit: int = Query(100, ge=1, le=500),
    ) -> DeliveryList:
        """The tenant's alerts, newest first."""
        _admin(caller)
        async with db.read() as conn:
            rows = await AlertRepository(conn, caller.tenant_id).deliveries(
                state=state, rule_id=rule_id, limit=limit
            )
        return DeliveryList(items=[delivery_out(d) for d in rows])

    @r.post("/deliveries/{alert_id}/retry", status_code=202, response_model=DeliveryOut)
    async def retry(caller: Caller, alert_id: str) -> DeliveryOut:
        """Deliver a dead-lettered alert again (a pending one is left as it is)."""
        _admin(caller)
        now = datetime.now(UTC)
        async with db.write() as conn:
            repo = AlertRepository(conn, caller.tenant_id)
            d = await repo.delivery(alert_id)
            if d is None:
                raise NotFound(f"no alert {alert_id}", code="alert_not_found")
            if d.state == "sent":
                raise Conflict("the alert was delivered", code="alert_delivered")
            if d.state == "dead":
                await repo.settle(
                    alert_id, state="pending", attempts=0, next_at=now, updated_at=now
                )
            d = await repo.delivery(alert_id)
        assert d is not None
        dispatcher.wake()
        return delivery_out(d)

    return r
