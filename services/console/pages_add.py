"""Add a mailbox: a provider preset (or discovery by address), the credential, a connection
test that shows each step's friendly result, then save (``POST /v1/accounts``)."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import FormData

from services.console import library
from services.console.client import ApiError
from services.console.pages_accounts import self_service
from services.console.session import Session, check_csrf
from services.console.web import Console, form_int, form_str, is_htmx, redirect, route_class

SECURITY = ("ssl", "starttls", "none")
INCOMING = ("imap", "pop3")
FIELDS = (
    "address",
    "display_name",
    "username",
    "incoming_host",
    "incoming_port",
    "incoming_security",
    "incoming_protocol",
    "outgoing_host",
    "outgoing_port",
    "outgoing_security",
    "ownership",
    "owner_id",
)


def server(form: FormData, role: str) -> dict[str, Any] | None:
    host = form_str(form, f"{role}_host", max_length=253)
    if not host:
        return None
    security = form_str(form, f"{role}_security", max_length=10) or "ssl"
    if security not in SECURITY:
        raise ApiError(422, "invalid_security", f"{role} security must be SSL, STARTTLS or none")
    out: dict[str, Any] = {
        "host": host,
        "port": form_int(form, f"{role}_port", low=1, high=65535),
        "security": security,
    }
    if role == "incoming":
        proto = form_str(form, "incoming_protocol", max_length=10) or "imap"
        if proto not in INCOMING:
            raise ApiError(422, "invalid_protocol", "incoming protocol must be IMAP or POP3")
        out["protocol"] = proto
    return {k: v for k, v in out.items() if v is not None}


def account_body(form: FormData, session: Session) -> dict[str, Any]:
    address = form_str(form, "address", max_length=320)
    if not address:
        raise ApiError(422, "address_required", "enter the mailbox's email address")
    body: dict[str, Any] = {"address": address}
    password = form.get("password")
    if isinstance(password, str) and password:
        if len(password) > 4096:
            raise ApiError(422, "too_long", "the password is too long")
        body["password"] = password
    for name in ("display_name", "username"):
        value = form_str(form, name, max_length=320)
        if value:
            body[name] = value
    preset = form_str(form, "preset_id", max_length=64)
    if preset:
        body["preset_id"] = preset
    incoming = server(form, "incoming")
    if incoming is not None:
        body["incoming"] = incoming
        if not preset:
            body["protocol"] = incoming["protocol"]
    outgoing = server(form, "outgoing")
    if outgoing is not None:
        body["outgoing"] = outgoing
    if form.get("allow_insecure") == "1":
        body["allow_insecure"] = True
    if session.is_admin:
        ownership = form_str(form, "ownership", max_length=10) or "personal"
        if ownership not in ("personal", "shared"):
            raise ApiError(422, "invalid_ownership", "ownership is personal or shared")
        body["ownership"] = ownership
        owner = form_str(form, "owner_id", max_length=64)
        if owner and ownership == "personal":
            body["owner_id"] = owner
    return body


def build_add_router(console: Console) -> APIRouter:
    r = APIRouter(
        prefix="/console/accounts/new", include_in_schema=False, route_class=route_class(console)
    )

    async def form_page(
        request: Request,
        session: Session,
        *,
        preset_id: str = "",
        values: dict[str, str] | None = None,
        error: str = "",
        status: int = 200,
    ) -> Response:
        api = session.api
        presets = (await api.get("registry", "/v1/presets"))["items"]
        preset = next((p for p in presets if p["id"] == preset_id), None)
        people = await library.directory(api) if session.is_admin else {}
        return console.page(
            request,
            session,
            "add.html",
            status=status,
            presets=presets,
            preset=preset,
            values=values or {},
            error=error,
            people=sorted(
                (p for p in people.values() if p["status"] == "active"), key=lambda p: p["name"]
            ),
            idempotency_key=secrets.token_urlsafe(16),
        )

    async def allowed(session: Session) -> None:
        if not session.is_admin and not await self_service(session.api):
            raise ApiError(
                403, "not_permitted", "adding a mailbox needs a tenant admin in this organisation"
            )

    @r.get("")
    async def new(request: Request, preset: Annotated[str, Query(max_length=64)] = "") -> Response:
        session = await console.session(request)
        await allowed(session)
        return await form_page(request, session, preset_id=preset)

    @r.get("/discover")
    async def discover(
        request: Request, address: Annotated[str, Query(max_length=320)] = ""
    ) -> Response:
        session = await console.session(request)
        if not address.strip():
            raise ApiError(422, "address_required", "enter the address first")
        found = await session.api.get("registry", "/v1/discover", address=address.strip())
        return console.page(request, session, "_discover.html", found=found)

    @r.post("/test")
    async def test(request: Request) -> Response:
        session = await console.session(request)
        await check_csrf(request)
        form = await request.form()
        body = account_body(form, session)
        body.pop("owner_id", None)
        body.pop("ownership", None)
        report = await session.api.post(
            "registry",
            "/v1/accounts/test",
            body,
            timeout_s=console.settings.connection_test_timeout_s,
        )
        if is_htmx(request):
            return console.page(request, session, "_test_result.html", report=report)
        return console.page(
            request, session, "test_page.html", report=report, back="/console/accounts/new"
        )

    @r.post("")
    async def save(request: Request) -> Response:
        session = await console.session(request)
        await check_csrf(request)
        form = await request.form()
        values = {k: form_str(form, k, max_length=320) for k in FIELDS}
        preset_id = form_str(form, "preset_id", max_length=64)
        key = form_str(form, "idempotency_key", max_length=64)
        try:
            body = account_body(form, session)
            r = await session.api.request(
                "registry",
                "POST",
                "/v1/accounts",
                json=body,
                headers={"Idempotency-Key": key} if key else {},
            )
        except ApiError as exc:
            if exc.status in (401, 403) or exc.status >= 500:
                raise
            return await form_page(
                request,
                session,
                preset_id=preset_id,
                values=values,
                error=f"{exc.message} (enter the password again)",
                status=exc.status,
            )
        return redirect(f"/console/mailboxes/{r.json()['id']}", "added")

    return r
