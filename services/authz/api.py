"""Authz HTTP API: grants on mailboxes, who has what, and checks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from libs.common.auth import Principal, Role
from libs.common.errors import Forbidden, NotFound
from libs.common.events.authz import GranteeKind, Level
from libs.common.http import ERRORS
from libs.common.service import Caller
from services.authz import domain, views
from services.authz.handlers import AuthzHandlers
from services.authz.index import AuthzIndex

Id = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
PathId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class GrantBody(BaseModel):
    grantee_kind: GranteeKind
    grantee_id: str = Field(min_length=1, max_length=128)
    level: Level
    on_behalf: bool = False
    expires_at: datetime | None = None


class GrantOut(BaseModel):
    mailbox_id: str
    grantee_kind: GranteeKind
    grantee_id: str
    level: Level | None = None
    on_behalf: bool = False
    expires_at: datetime | None = None
    changed: bool
    revision: int = Field(description="the tenant's authz revision in force after this write")


class CheckPrincipal(BaseModel):
    subject: str = Field(min_length=1, max_length=128)
    role: Role = "employee"
    scopes: list[str] = Field(default_factory=list)


class CheckBody(BaseModel):
    principal: CheckPrincipal | None = None
    mailbox_id: str = Id
    action: str = Field(min_length=1, max_length=64)
    at_least_as_fresh: int | None = Field(None, ge=0)


class DecisionOut(BaseModel):
    allowed: bool
    reason: str
    detail: str
    level: str | None
    source: str | None
    grantee: str | None
    on_behalf: bool
    revision: int


class AccessEntryOut(BaseModel):
    grantee_kind: str
    grantee_id: str
    level: str
    source: str
    on_behalf: bool
    expires_at: datetime | None
    revision: int | None
    members: list[str]


class MailboxAccessOut(BaseModel):
    mailbox_id: str
    owner_id: str | None
    ownership: str
    disabled: bool
    revision: int
    entries: list[AccessEntryOut]


class EmployeeMailboxOut(BaseModel):
    mailbox_id: str
    level: str
    source: str
    grantee: str | None
    on_behalf: bool
    expires_at: datetime | None
    disabled: bool


class EmployeeAccessOut(BaseModel):
    employee_id: str
    department: str | None
    offboarded: bool
    revision: int
    mailboxes: list[EmployeeMailboxOut]


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__}


def build_router(handlers: AuthzHandlers, index: AuthzIndex) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["authz"], responses=ERRORS)  # type: ignore[arg-type]

    @r.post("/mailboxes/{mailbox_id}/grants", response_model=GrantOut, status_code=201)
    async def grant(
        caller: Caller, body: GrantBody, response: Response, mailbox_id: PathId
    ) -> GrantOut:
        """Grant a level; granting the same again changes nothing (200, ``changed: false``)."""
        cmd = domain.GrantAccess(
            mailbox_id,
            body.grantee_kind,
            body.grantee_id,
            body.level,
            body.on_behalf,
            _utc(body.expires_at),
        )
        result = await handlers.grant(caller, cmd)
        if not result.changed:
            response.status_code = 200
        return GrantOut(
            mailbox_id=mailbox_id,
            grantee_kind=body.grantee_kind,
            grantee_id=body.grantee_id,
            level=body.level,
            on_behalf=body.on_behalf,
            expires_at=cmd.expires_at,
            changed=result.changed,
            revision=result.revision,
        )

    @r.delete("/mailboxes/{mailbox_id}/grants/{grantee_kind}/{grantee_id}", response_model=GrantOut)
    async def revoke(
        caller: Caller, grantee_kind: GranteeKind, grantee_id: str, mailbox_id: PathId
    ) -> GrantOut:
        """Revoke a grant; revoking one that does not exist changes nothing."""
        cmd = domain.RevokeAccess(mailbox_id, grantee_kind, grantee_id)
        result = await handlers.revoke(caller, cmd)
        return GrantOut(
            mailbox_id=mailbox_id,
            grantee_kind=grantee_kind,
            grantee_id=grantee_id,
            changed=result.changed,
            revision=result.revision,
        )

    @r.get("/mailboxes/{mailbox_id}/access", response_model=MailboxAccessOut)
    async def mailbox_access(caller: Caller, mailbox_id: PathId) -> MailboxAccessOut:
        """Who has what on the mailbox (needs configure on it)."""
        await index.catch_up(caller.tenant_id)
        state = index.state(caller.tenant_id)
        mb = state.mailboxes.get(mailbox_id)
        if mb is None or mb.deleted:
            raise NotFound(f"mailbox {mailbox_id} does not exist", code="mailbox_not_found")
        decision = index.check(caller, mailbox_id, "configure")
        if not decision.allowed:
            raise Forbidden("seeing a mailbox's access needs configure on it", code="forbidden")
        entries = views.mailbox_access(state, mailbox_id, datetime.now(UTC))
        return MailboxAccessOut(
            mailbox_id=mailbox_id,
            owner_id=mb.owner_id,
            ownership=mb.ownership,
            disabled=mb.disabled,
            revision=state.revision,
            entries=[AccessEntryOut(**_fields(e)) for e in entries],
        )

    @r.get("/employees/{employee_id}/access", response_model=EmployeeAccessOut)
    async def employee_access(caller: Caller, employee_id: PathId) -> EmployeeAccessOut:
        """Which mailboxes the employee reaches, at which level (admins, services, oneself)."""
        if caller.role == "employee" and caller.subject != employee_id:
            raise Forbidden("only admins see another employee's access", code="forbidden")
        await index.catch_up(caller.tenant_id)
        state = index.state(caller.tenant_id)
        emp = state.employees.get(employee_id)
        rows = views.employee_access(state, employee_id, datetime.now(UTC))
        return EmployeeAccessOut(
            employee_id=employee_id,
            department=emp.department if emp else None,
            offboarded=bool(emp and emp.offboarded),
            revision=state.revision,
            mailboxes=[EmployeeMailboxOut(**_fields(m)) for m in rows],
        )

    @r.post("/check", response_model=DecisionOut)
    async def check(caller: Caller, body: CheckBody) -> DecisionOut:
        """May the principal (default: the caller) do the action? Always 200 with the reason."""
        principal = caller
        if body.principal is not None:
            p = body.principal
            if caller.role == "employee" and (p.subject, p.role) != (caller.subject, "employee"):
                raise Forbidden("employees may only check themselves", code="forbidden")
            principal = Principal(caller.tenant_id, p.subject, p.role, scopes=frozenset(p.scopes))
        d = await index.check_fresh(principal, body.mailbox_id, body.action, body.at_least_as_fresh)
        return DecisionOut(**d.to_json())

    return r
