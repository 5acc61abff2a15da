"""Registry HTTP API: mailbox signatures and personal signatures.

* ``GET /v1/accounts/{id}/signatures``: the mailbox's signatures (needs Read).
* ``PUT|GET|DELETE /v1/accounts/{id}/signatures/{name}``: ``default`` or a named alternate
  (PUT and DELETE need Configure).
* ``POST /v1/accounts/{id}/signatures/preview``: a draft sanitised as a save would, with its
  placeholders filled as a send fills them (needs Configure; writes nothing).
* ``PUT|GET|DELETE /v1/employees/{id}/signature``: the employee's own signature (the
  employee themself or a tenant admin).

HTML is sanitised on the way in (``signatures.py``); an unknown placeholder is 422
``unknown_placeholder``. Setting the same HTML again, or deleting what is not there, changes
nothing and answers ``changed: false``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from libs.common.auth import Principal
from libs.common.errors import Forbidden, NotFound
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.registry import domain_signatures as sig
from services.registry import signature_preview, signatures
from services.registry.api import context
from services.registry.handlers_signatures import Outcome, SignatureHandlers
from services.registry.permissions import Permissions
from services.registry.repository import RegistryRepository
from services.registry.repository_signatures import SignatureRepository, SignatureRow

Name = Annotated[str, Path(min_length=1, max_length=64, description="'default' or an alternate")]
Id = Annotated[str, Path(min_length=1, max_length=64)]


class SignatureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    html: str = Field(
        min_length=1,
        max_length=signatures.MAX_HTML,
        description="rich text; sanitised, placeholders like {employee.name} filled at send time",
    )


class SignatureOut(BaseModel):
    name: str
    html: str
    text: str
    placeholders: list[str]
    updated_at: datetime | None = None
    updated_by: str | None = None


class SignatureChange(BaseModel):
    changed: bool
    """False: the signature was already so (a repeated PUT, or a DELETE of nothing)."""
    signature: SignatureOut | None = None


class SignatureList(BaseModel):
    account_id: str
    items: list[SignatureOut]
    placeholders: list[str] = Field(
        default_factory=lambda: sorted(signatures.PLACEHOLDERS),
        description="the placeholders a signature may use",
    )


class RemovedOut(BaseModel):
    element: str = Field(description="the element's tag (``#comment`` for a comment)")
    attribute: str | None = Field(
        default=None, description="null: the element itself; else this attribute of it"
    )
    count: int


class PreviewOut(BaseModel):
    html: str = Field(description="sanitised as a save would store it, placeholders as written")
    text: str = Field(description="the plain-text version, placeholders as written")
    placeholders: list[str]
    filled_html: str = Field(description="the HTML with placeholders filled (values escaped)")
    filled_text: str = Field(description="the plain text with placeholders filled")
    values: dict[str, str] = Field(description="the placeholder values used")
    filled_for: str | None = Field(
        description="the employee whose details fill ``{employee.*}``: the caller when an "
        "employee (as when they send), else the mailbox's owner; null: none (left empty)"
    )
    removed: list[RemovedOut] | None = Field(
        description="what the sanitiser took out of the draft; null if the draft was too "
        "malformed to take stock of"
    )


def _out(row: SignatureRow) -> SignatureOut:
    return SignatureOut(
        name=row.name,
        html=row.html,
        text=row.text,
        placeholders=sorted(signatures.placeholders_in(row.html)),
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )


def _stored(name: str, stored: sig.Stored | None) -> SignatureOut | None:
    if stored is None:
        return None
    found = sorted(signatures.placeholders_in(stored.html))
    return SignatureOut(name=name, html=stored.html, text=stored.text, placeholders=found)


def _change(name: str, outcome: Outcome) -> SignatureChange:
    return SignatureChange(changed=outcome.changed, signature=_stored(name, outcome.stored))


def _self_or_admin(caller: Principal, employee_id: str) -> None:
    if caller.is_admin or (caller.role == "employee" and caller.subject == employee_id):
        return
    raise Forbidden(
        "a personal signature is the employee's own (or a tenant admin's) to see and change",
        code="not_permitted",
    )


def build_signature_router(h: SignatureHandlers, perms: Permissions, db: Database) -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERRORS, tags=["signatures"])  # type: ignore[arg-type]

    async def known_account(tenant_id: str, account_id: str) -> None:
        async with db.read() as conn:
            if await RegistryRepository(conn, tenant_id).account(account_id) is None:
                raise NotFound(f"no account {account_id}")

    # --- mailbox signatures -----------------------------------------------------------------
    @r.get("/accounts/{account_id}/signatures", response_model=SignatureList)
    async def list_signatures(caller: Caller, account_id: Id) -> SignatureList:
        """The mailbox's default signature (first) and its named alternates."""
        await perms.require(caller, account_id, "read")
        await known_account(caller.tenant_id, account_id)
        async with db.read() as conn:
            rows = await SignatureRepository(conn, caller.tenant_id).of_account(account_id)
        return SignatureList(account_id=account_id, items=[_out(row) for row in rows])

    @r.get("/accounts/{account_id}/signatures/{name}", response_model=SignatureOut)
    async def get_signature(caller: Caller, account_id: Id, name: Name) -> SignatureOut:
        await perms.require(caller, account_id, "read")
        async with db.read() as conn:
            rows = await SignatureRepository(conn, caller.tenant_id).of_account(account_id, name)
        if not rows:
            await known_account(caller.tenant_id, account_id)
            raise NotFound(f"no signature {name!r} on account {account_id}", code="no_signature")
        return _out(rows[0])

    @r.post("/accounts/{account_id}/signatures/preview", response_model=PreviewOut)
    async def preview_signature(caller: Caller, account_id: Id, body: SignatureIn) -> PreviewOut:
        """A draft as a save would store it (same checks: 422 ``unknown_placeholder``,
        ``empty_signature``) and as a send from this mailbox fills it; writes nothing, emits no
        event. Needs Configure, like saving."""
        await perms.require(caller, account_id, "configure")
        async with db.read() as conn:
            repo = RegistryRepository(conn, caller.tenant_id)
            account = await repo.account(account_id)
            if account is None:
                raise NotFound(f"no account {account_id}")
            person_id = caller.subject if caller.role == "employee" else account.owner_id
            person = await repo.employee(person_id) if person_id else None
        values = signature_preview.values_for(account, person)
        p = signature_preview.preview(body.html, values)
        return PreviewOut(
            html=p.html,
            text=p.text,
            placeholders=p.placeholders,
            filled_html=p.filled_html,
            filled_text=p.filled_text,
            values=values,
            filled_for=person.id if person is not None else None,
            removed=None
            if p.removed is None
            else [
                RemovedOut(element=x.element, attribute=x.attribute, count=x.count)
                for x in p.removed
            ],
        )

    @r.put("/accounts/{account_id}/signatures/{name}", response_model=SignatureChange)
    async def set_signature(
        caller: Caller, account_id: Id, name: Name, body: SignatureIn
    ) -> SignatureChange:
        """Set the default (``name`` = ``default``) or a named alternate; needs Configure.
        SignatureSet carries the sanitised HTML and its plain text."""
        await perms.require(caller, account_id, "configure")
        done = await h.mailbox(context(caller), account_id, sig.SetSignature(name, body.html))
        return _change(name, done)

    @r.delete("/accounts/{account_id}/signatures/{name}", response_model=SignatureChange)
    async def remove_signature(caller: Caller, account_id: Id, name: Name) -> SignatureChange:
        """Remove a signature (SignatureRemoved); ``changed: false`` if there was none."""
        await perms.require(caller, account_id, "configure")
        done = await h.mailbox(context(caller), account_id, sig.RemoveSignature(name))
        return _change(name, done)

    # --- personal signatures ----------------------------------------------------------------
    @r.get("/employees/{employee_id}/signature", response_model=SignatureOut)
    async def get_personal(caller: Caller, employee_id: Id) -> SignatureOut:
        _self_or_admin(caller, employee_id)
        async with db.read() as conn:
            row = await SignatureRepository(conn, caller.tenant_id).personal(employee_id)
            known = row is not None or await RegistryRepository(conn, caller.tenant_id).employee(
                employee_id
            )
        if not known:
            raise NotFound(f"no employee {employee_id}")
        if row is None:
            raise NotFound(f"employee {employee_id} has no signature", code="no_signature")
        return _out(row)

    @r.put("/employees/{employee_id}/signature", response_model=SignatureChange)
    async def set_personal(caller: Caller, employee_id: Id, body: SignatureIn) -> SignatureChange:
        """The employee's own signature, added above the mailbox's when they send."""
        _self_or_admin(caller, employee_id)
        done = await h.personal(context(caller), employee_id, sig.SetPersonal(body.html))
        return _change("personal", done)

    @r.delete("/employees/{employee_id}/signature", response_model=SignatureChange)
    async def remove_personal(caller: Caller, employee_id: Id) -> SignatureChange:
        _self_or_admin(caller, employee_id)
        done = await h.personal(context(caller), employee_id, sig.RemovePersonal())
        return _change("personal", done)

    return r
