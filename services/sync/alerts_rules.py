"""Alert rules, pure: what a rule is, what it matches, what an alert says.

A rule matches event kinds — ``sync_failed`` (optionally only some reason classes),
``auth_failed``, ``mail_missing`` (optionally only some kinds), ``offline`` (an account failed
for longer than ``offline_after_s``) — on some mailboxes or all, and sends an email (through
the sender, from ``email.mailbox_id``) and/or a signed HTTPS webhook. One alert per rule,
mailbox and kind per ``throttle_s``; a recovery notice when the mailbox recovers.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from libs.common.events.sync import (
    AlertKind,
    AlertNotice,
    AlertRuleSet,
    FailureClass,
    MissingKind,
)

_ADDRESS = re.compile(r"^[^@\s<>\"',;]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
MAX_THROTTLE_S = 7 * 86400
TITLES: dict[str, str] = {
    "sync_failed": "sync failed",
    "auth_failed": "login refused (authentication failed)",
    "mail_missing": "mail missing",
    "offline": "mailbox down",
    "recovered": "recovered",
}


class EmailAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mailbox_id: str = Field(description="the mailbox the alert is sent from (through the sender)")
    to: list[str] = Field(min_length=1, max_length=20)

    @field_validator("mailbox_id")
    @classmethod
    def _mailbox(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("mailbox_id is not a mailbox id")
        return v

    @field_validator("to")
    @classmethod
    def _to(cls, v: list[str]) -> list[str]:
        for a in v:
            if not _ADDRESS.match(a):
                raise ValueError(f"{a[:80]!r} is not an email address")
        return v


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(max_length=2000)
    secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key (16-256 characters); write-only. Required when a rule first "
        "gets a webhook; omitted on a change, the stored one stays.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+[^\s]*\Z", v):
            raise ValueError("url must be an absolute http(s) URL")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not 16 <= len(v.get_secret_value()) <= 256:
            raise ValueError("secret must be 16 to 256 characters")
        return v


class RuleIn(BaseModel):
    """A rule as an admin writes it (``POST`` / ``PUT /v1/alerts/rules``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=200)
    enabled: bool = True
    kinds: list[AlertKind] = Field(min_length=1, max_length=4)
    reason_classes: list[FailureClass] = Field(
        default_factory=list, description="sync_failed: only these (empty: any)"
    )
    missing_kinds: list[MissingKind] = Field(
        default_factory=list, description="mail_missing: only these (empty: any)"
    )
    offline_after_s: int | None = Field(None, ge=1, le=30 * 86400)
    mailboxes: list[str] = Field(default_factory=list, max_length=1000)
    email: EmailAction | None = None
    webhook: WebhookIn | None = None
    throttle_s: int = Field(3600, ge=0, le=MAX_THROTTLE_S)
    notify_recovery: bool = True

    @field_validator("mailboxes")
    @classmethod
    def _mailboxes(cls, v: list[str]) -> list[str]:
        for m in v:
            if not _ID.match(m):
                raise ValueError(f"{m[:80]!r} is not a mailbox id")
        return sorted(set(v))

    @model_validator(mode="after")
    def _whole(self) -> RuleIn:
        if self.email is None and self.webhook is None:
            raise ValueError("a rule needs an action: email and/or webhook")
        if "offline" in self.kinds and self.offline_after_s is None:
            raise ValueError("kind offline needs offline_after_s")
        return self


def rule_event(rule: RuleIn, secret_version: int) -> AlertRuleSet:
    """The event (and the stored spec) of a rule: everything but the webhook secret."""
    return AlertRuleSet(
        name=rule.name,
        enabled=rule.enabled,
        kinds=sorted(set(rule.kinds)),
        reason_classes=sorted(set(rule.reason_classes)),
        missing_kinds=sorted(set(rule.missing_kinds)),
        offline_after_s=rule.offline_after_s,
        mailboxes=rule.mailboxes,
        email_mailbox_id=rule.email.mailbox_id if rule.email else None,
        email_to=list(rule.email.to) if rule.email else [],
        webhook_url=rule.webhook.url if rule.webhook else None,
        webhook_secret_version=secret_version if rule.webhook else 0,
        throttle_s=rule.throttle_s,
        notify_recovery=rule.notify_recovery,
    )


class Rule(BaseModel):
    """A stored rule (the spec is :class:`AlertRuleSet`'s payload)."""

    model_config = ConfigDict(frozen=True)
    tenant_id: str
    rule_id: str
    spec: AlertRuleSet
    has_secret: bool
    version: int
    updated_at: datetime

    def covers(self, account_id: str) -> bool:
        return self.spec.enabled and (not self.spec.mailboxes or account_id in self.spec.mailboxes)

    def channels(self) -> list[str]:
        out = []
        if self.spec.email_mailbox_id and self.spec.email_to:
            out.append("email")
        if self.spec.webhook_url and self.has_secret:
            out.append("webhook")
        return out

    def failure_kinds(self, reason_class: str) -> list[AlertKind]:
        """The kinds a SyncFailed with this reason class fires at once."""
        s, out = self.spec, list[AlertKind]()
        if "sync_failed" in s.kinds and (not s.reason_classes or reason_class in s.reason_classes):
            out.append("sync_failed")
        if "auth_failed" in s.kinds and reason_class == "auth":
            out.append("auth_failed")
        return out

    def wants_missing(self, kind: str) -> bool:
        s = self.spec
        return "mail_missing" in s.kinds and (not s.missing_kinds or kind in s.missing_kinds)


def throttled(last_alert_at: datetime | None, now: datetime, throttle_s: int) -> bool:
    return last_alert_at is not None and (now - last_alert_at).total_seconds() < throttle_s


def backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Delay after the ``attempt``-th failed attempt (1, 2, ...)."""
    return float(min(max_s, base_s * 2 ** max(0, min(attempt - 1, 30))))


def payload(
    *,
    alert_id: str,
    rule: Rule,
    account_id: str,
    address: str | None,
    kind: AlertNotice,
    occurred_at: datetime,
    event_id: str | None,
    reason_class: str | None = None,
    detail: str = "",
    state: str | None = None,
    recovered: list[str] | None = None,
) -> dict[str, Any]:
    """What an alert says (the webhook body; the email is written from it). No secrets."""
    doc: dict[str, Any] = {
        "id": alert_id,
        "type": "mailroom.sync.alert",
        "kind": kind,
        "title": TITLES[kind],
        "tenant_id": rule.tenant_id,
        "rule": {"id": rule.rule_id, "name": rule.spec.name},
        "mailbox": {"id": account_id, "address": address},
        "occurred_at": occurred_at.isoformat(),
        "event_id": event_id,
    }
    if reason_class is not None:
        doc["reason_class"] = reason_class
    if detail:
        doc["detail"] = detail[:500]
    if state is not None:
        doc["state"] = state
    if recovered is not None:
        doc["recovered"] = recovered
    return doc


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def email_text(doc: dict[str, Any]) -> tuple[str, str]:
    """Subject and text of an alert email."""
    who = doc["mailbox"]["address"] or doc["mailbox"]["id"]
    subject = f"[Mailroom] {who}: {doc['title']}"
    lines = [
        f"Mailbox: {who} ({doc['mailbox']['id']})",
        f"What: {doc['title']}",
        f"When: {doc['occurred_at']}",
        f"Rule: {doc['rule']['name']}",
    ]
    if doc.get("reason_class"):
        lines.append(f"Reason: {doc['reason_class']}")
    if doc.get("detail"):
        lines.append(f"Detail: {doc['detail']}")
    if doc.get("recovered"):
        lines.append(f"Cleared: {', '.join(doc['recovered'])}")
    lines += ["", f"Alert {doc['id']} (tenant {doc['tenant_id']})."]
    return _CONTROL.sub(" ", subject)[:900], "\n".join(lines) + "\n"
