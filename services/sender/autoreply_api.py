"""Autoreply HTTP API (needs Configure on the mailbox):

* ``PUT /v1/mailboxes/{id}/autoreply``: set it (idempotent: the same settings change nothing);
* ``GET /v1/mailboxes/{id}/autoreply``: read it (404 ``no_autoreply`` when none is set);
* ``DELETE /v1/mailboxes/{id}/autoreply``: clear it (204, also when none was set).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import nh3
from fastapi import APIRouter, Path, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from libs.common.auth import Principal
from libs.common.errors import Conflict, Forbidden, NotFound
from libs.common.events.envelope import CommandContext
from libs.common.http import ERROR_SCHEMA, ERRORS
from libs.common.service import Caller
from services.sender import autoreply, domain
from services.sender.autoreply_handlers import AutoreplyCommands
from services.sender.autoreply_repository import Stored
from services.sender.permissions import check_configure
from services.sender.ports import Wiring

MailboxId = Annotated[str, Path(min_length=1, max_length=64)]
_NOT_FOUND = frozenset({"unknown_mailbox", "other_tenant"})


def _encodable(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    return value


class AutoreplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str = Field(min_length=1, max_length=20_000, description="the plain-text reply")
    html: str | None = Field(
        None, max_length=100_000, description="an HTML version (sanitised on the way in)"
    )
    subject: str | None = Field(
        None, min_length=1, max_length=200, description="default: Auto: <original subject>"
    )
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    interval_days: int = Field(
        autoreply.DEFAULT_INTERVAL_DAYS,
        ge=1,
        le=autoreply.MAX_INTERVAL_DAYS,
        description="answer each correspondent at most once in this many days (RFC 3834: 7)",
    )

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be blank")
        return _encodable(v, "text")

    @field_validator("html")
    @classmethod
    def _html(cls, v: str | None) -> str | None:
        if v is None:
            return None
        clean = nh3.clean(_encodable(v, "html")).strip()
        return clean or None

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str | None) -> str | None:
        if v is None:
            return None
        return domain.check_header_text(v, "subject").strip() or None

    @model_validator(mode="after")
    def _window(self) -> AutoreplyIn:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    def rule(self, now: datetime) -> autoreply.Rule:
        return autoreply.Rule(
            text=self.text,
            html=self.html,
            subject=self.subject,
            starts_at=self.starts_at.astimezone(UTC) if self.starts_at else None,
            ends_at=self.ends_at.astimezone(UTC) if self.ends_at else None,
            interval_days=self.interval_days,
            set_at=now,
        )


class AutoreplyOut(BaseModel):
    mailbox_id: str
    text: str
    html: str | None
    subject: str | None
    starts_at: datetime | None
    ends_at: datetime | None
    interval_days: int
    source: str = Field(description="api, or offboarding (cleared when the leaver is reinstated)")
    employee_id: str | None = Field(description="offboarding: the leaver")
    set_at: datetime
    set_by: str
    active: bool = Field(description="answering now (inside its window)")


def autoreply_out(s: Stored) -> AutoreplyOut:
    r = s.rule
    return AutoreplyOut(
        mailbox_id=s.mailbox_id,
        text=r.text,
        html=r.html,
        subject=r.subject,
        starts_at=r.starts_at,
        ends_at=r.ends_at,
        interval_days=r.interval_days,
        source=s.source,
        employee_id=s.employee_id,
        set_at=s.set_at,
        set_by=s.set_by,
        active=r.active(datetime.now(UTC)),
    )


def build_autoreply_router(commands: AutoreplyCommands, wiring: Wiring) -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {code: ERROR_SCHEMA for code in ERRORS}
    r = APIRouter(prefix="/v1/mailboxes", tags=["sender"], responses=errors)

    async def configure(caller: Principal, mailbox_id: str) -> CommandContext:
        decision = await check_configure(wiring.permissions, caller, mailbox_id)
        if not decision.allowed:
            if decision.reason in _NOT_FOUND:
                raise NotFound(f"no mailbox {mailbox_id}")
            if decision.reason == "mailbox_deleted":
                raise Conflict(f"mailbox {mailbox_id} is deleted", code="mailbox_deleted")
            raise Forbidden(
                f"configuring mailbox {mailbox_id} is not allowed ({decision.reason})",
                code="forbidden",
                details={"reason": decision.reason, "detail": decision.detail},
            )
        return CommandContext(caller.tenant_id, caller.actor)

    @r.put("/{mailbox_id}/autoreply", response_model=AutoreplyOut)
    async def put(mailbox_id: MailboxId, body: AutoreplyIn, caller: Caller) -> AutoreplyOut:
        """Set the mailbox's autoresponder (needs Configure). It answers new mail seen by sync
        within its window, following RFC 3834; setting the same again changes nothing."""
        ctx = await configure(caller, mailbox_id)
        return autoreply_out(await commands.put(ctx, mailbox_id, body.rule(datetime.now(UTC))))

    @r.get("/{mailbox_id}/autoreply", response_model=AutoreplyOut)
    async def get(mailbox_id: MailboxId, caller: Caller) -> AutoreplyOut:
        """The mailbox's autoresponder (needs Configure)."""
        await configure(caller, mailbox_id)
        return autoreply_out(await commands.get(caller.tenant_id, mailbox_id))

    @r.delete("/{mailbox_id}/autoreply", status_code=204)
    async def delete(mailbox_id: MailboxId, caller: Caller) -> Response:
        """Clear the mailbox's autoresponder (needs Configure); 204 also when none was set."""
        ctx = await configure(caller, mailbox_id)
        await commands.clear(ctx, mailbox_id)
        return Response(status_code=204)

    return r
