"""A mailbox's actions: settings, credential, sync now, connection test, disable/reactivate,
signatures (save, remove, make default, preview), and who has which level. Each is a form POST
(CSRF-checked) that calls the APIs and goes back to the mailbox's page; the backend decides
whether the user may. The signature preview answers the editor's live preview (htmx) with the
registry's rendering, or without script a page of its own."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from services.console.client import ApiError
from services.console.pages_accounts import check_id
from services.console.session import check_csrf
from services.console.web import Console, form_int, form_str, is_htmx, redirect, route_class

_SIG_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
SIG_MAX = 20_000  # characters of HTML a console form takes (the textarea's maxlength)
_GRANTEE = re.compile(r"^(employee|department):(.{1,128})\Z")
LEVELS = ("read", "write", "send", "configure")


def addresses(raw: str) -> list[str]:
    return [a.strip() for a in re.split(r"[,;\s]+", raw) if a.strip()]


def build_mailbox_router(console: Console) -> APIRouter:
    r = APIRouter(
        prefix="/console/mailboxes/{mailbox_id}",
        include_in_schema=False,
        route_class=route_class(console),
    )

    async def begin(request: Request, mailbox_id: str) -> tuple[Any, Any]:
        session = await console.session(request)
        check_id(mailbox_id)
        await check_csrf(request)
        return session, await request.form()

    def back(mailbox_id: str, notice: str, anchor: str = "") -> Response:
        response = redirect(f"/console/mailboxes/{mailbox_id}", notice)
        if anchor:
            response.headers["Location"] += f"#{anchor}"
        return response

    @r.post("/sync")
    async def sync_now(request: Request, mailbox_id: str) -> Response:
        session, _ = await begin(request, mailbox_id)
        await session.api.post("sync", f"/v1/accounts/{mailbox_id}/sync")
        return back(mailbox_id, "sync")

    @r.post("/test")
    async def test(request: Request, mailbox_id: str) -> Response:
        session, _ = await begin(request, mailbox_id)
        report = await session.api.post(
            "registry",
            f"/v1/accounts/{mailbox_id}/test",
            timeout_s=console.settings.connection_test_timeout_s,
        )
        if is_htmx(request):
            return console.page(request, session, "_test_result.html", report=report)
        return console.page(
            request,
            session,
            "test_page.html",
            report=report,
            back=f"/console/mailboxes/{mailbox_id}",
        )

    @r.post("/disable")
    async def disable(request: Request, mailbox_id: str) -> Response:
        session, _ = await begin(request, mailbox_id)
        await session.api.post(
            "registry", f"/v1/accounts/{mailbox_id}/disable", {"reason": "disabled in the console"}
        )
        return back(mailbox_id, "disabled")

    @r.post("/reactivate")
    async def reactivate(request: Request, mailbox_id: str) -> Response:
        session, _ = await begin(request, mailbox_id)
        await session.api.post("registry", f"/v1/accounts/{mailbox_id}/reactivate")
        return back(mailbox_id, "reactivated")

    @r.post("/settings")
    async def settings(request: Request, mailbox_id: str) -> Response:
        session, form = await begin(request, mailbox_id)
        body: dict[str, Any] = {
            "display_name": form_str(form, "display_name", max_length=200) or None,
            "send_as_name": form_str(form, "send_as_name", max_length=200) or None,
            "polling_interval_s": form_int(form, "polling_interval_s", low=1, high=86400),
            "daily_send_limit": form_int(form, "daily_send_limit", low=1, high=1_000_000),
            "forwarding": addresses(form_str(form, "forwarding", max_length=2000)),
        }
        body = {k: v for k, v in body.items() if v is not None}
        version = form_int(form, "version", low=0)
        headers = {"If-Match": f'"{version}"'} if version is not None else {}
        await session.api.request(
            "registry", "PATCH", f"/v1/accounts/{mailbox_id}", json=body, headers=headers
        )
        return back(mailbox_id, "saved", "settings")

    @r.post("/credential")
    async def credential(request: Request, mailbox_id: str) -> Response:
        session, form = await begin(request, mailbox_id)
        password = form.get("password")
        if not isinstance(password, str) or not password or len(password) > 4096:
            raise ApiError(422, "password_required", "enter the new password")
        await session.api.put(
            "registry", f"/v1/accounts/{mailbox_id}/credential", {"password": password}
        )
        return back(mailbox_id, "credential", "settings")

    @r.post("/signatures")
    async def set_signature(request: Request, mailbox_id: str) -> Response:
        session, form = await begin(request, mailbox_id)
        name = form_str(form, "name", max_length=64) or "default"
        html = form_str(form, "html", max_length=SIG_MAX)
        if not _SIG_NAME.match(name):
            raise ApiError(422, "invalid_name", "a signature name is letters, digits, . _ or -")
        if not html:
            raise ApiError(422, "html_required", "write the signature first")
        await session.api.put(
            "registry", f"/v1/accounts/{mailbox_id}/signatures/{name}", {"html": html}
        )
        return back(mailbox_id, "signature", "signatures")

    @r.post("/signatures/preview")
    async def preview_signature(request: Request, mailbox_id: str) -> Response:
        """The draft as the registry would store it and a send would fill it; a draft it
        refuses (unknown placeholder, nothing left once cleaned, too long) shows why, in place."""
        session, form = await begin(request, mailbox_id)
        name = form_str(form, "name", max_length=64) or "default"
        preview: dict[str, Any] | None = None
        problem = ""
        try:
            html = form_str(form, "html", max_length=SIG_MAX)
            if html:
                preview = await session.api.post(
                    "registry", f"/v1/accounts/{mailbox_id}/signatures/preview", {"html": html}
                )
        except ApiError as exc:
            if exc.status != 422:
                raise
            html, problem = "", exc.message
        unfilled = bool(preview) and any(
            p.startswith("employee.") for p in (preview or {}).get("placeholders", [])
        )
        address = ""
        if not is_htmx(request):  # the whole page names the mailbox
            account = await session.api.maybe(
                session.api.get("registry", f"/v1/accounts/{mailbox_id}")
            )
            address = str((account or {}).get("address") or "")
        return console.page(
            request,
            session,
            "_signature_preview.html" if is_htmx(request) else "signature_preview.html",
            address=address,
            preview=preview,
            problem=problem,
            unfilled_employee=unfilled,
            mailbox_id=mailbox_id,
            name=name,
            html=html,
        )

    @r.post("/signatures/make-default")
    async def make_default(request: Request, mailbox_id: str) -> Response:
        """An alternate becomes the default: its HTML is copied into ``default`` (one
        SignatureSet; the alternate stays)."""
        session, form = await begin(request, mailbox_id)
        name = form_str(form, "name", max_length=64)
        if not _SIG_NAME.match(name) or name == "default":
            raise ApiError(422, "invalid_name", "choose an alternate signature")
        base = f"/v1/accounts/{mailbox_id}/signatures"
        alternate = await session.api.get("registry", f"{base}/{name}")
        await session.api.put("registry", f"{base}/default", {"html": alternate["html"]})
        return back(mailbox_id, "signature", "signatures")

    @r.post("/signatures/remove")
    async def remove_signature(request: Request, mailbox_id: str) -> Response:
        session, form = await begin(request, mailbox_id)
        name = form_str(form, "name", max_length=64)
        if not _SIG_NAME.match(name):
            raise ApiError(422, "invalid_name", "no such signature")
        await session.api.delete("registry", f"/v1/accounts/{mailbox_id}/signatures/{name}")
        return back(mailbox_id, "signature_removed", "signatures")

    @r.post("/grant")
    async def grant(request: Request, mailbox_id: str) -> Response:
        session, form = await begin(request, mailbox_id)
        m = _GRANTEE.match(form_str(form, "grantee", max_length=140))
        if m is None:
            raise ApiError(422, "grantee_required", "choose a person or a department")
        level = form_str(form, "level", max_length=20)
        if level not in LEVELS:
            raise ApiError(422, "invalid_level", "choose Read, Write, Send or Configure")
        body: dict[str, Any] = {
            "grantee_kind": m[1],
            "grantee_id": m[2],
            "level": level,
            "on_behalf": form.get("on_behalf") == "1",
        }
        expires = form_str(form, "expires", max_length=10)
        if expires:
            body["expires_at"] = end_of_day(expires)
        await session.api.post("authz", f"/v1/mailboxes/{mailbox_id}/grants", body)
        return back(mailbox_id, "granted", "people")

    @r.post("/revoke")
    async def revoke(request: Request, mailbox_id: str) -> Response:
        session, form = await begin(request, mailbox_id)
        kind = form_str(form, "grantee_kind", max_length=20)
        grantee = form_str(form, "grantee_id", max_length=128)
        if kind not in ("employee", "department") or not grantee:
            raise ApiError(422, "grantee_required", "no such grant")
        path = f"/v1/mailboxes/{mailbox_id}/grants/{kind}/{quote(grantee, safe='')}"
        await session.api.delete("authz", path)
        return back(mailbox_id, "revoked", "people")

    return r


def end_of_day(value: str) -> str:
    """``2027-01-31`` (a date input) → the end of that day, UTC, as the API wants it."""
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise ApiError(422, "invalid_date", "the end date must be a date (YYYY-MM-DD)") from None
    end = datetime.combine(day, time(23, 59, 59), tzinfo=UTC)
    if end <= datetime.now(UTC):
        raise ApiError(422, "date_in_past", "the end date must be in the future")
    return end.isoformat()
