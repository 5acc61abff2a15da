"""The account library (``/console/``), its live status, and a mailbox's detail page."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from services.console import library
from services.console.client import Api, ApiError
from services.console.session import Session
from services.console.web import Console, route_class

MailboxId = Annotated[str, re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")]
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
PROTOCOLS = ("imap", "pop3", "exchange", "office365", "gmail", "custom")
STATE_FILTERS = ("online", "syncing", "offline", "auth_failed", "tls_error", "disabled", "pending")


def check_id(value: str, what: str = "mailbox") -> str:
    if not _ID.match(value):
        raise ApiError(404, "not_found", f"no {what} {value[:64]!r}")
    return value


async def level_on(session: Session, mailbox_id: str) -> str | None:
    """The user's level on the mailbox (authz's answer), None if none."""
    if session.is_admin:
        return "configure"
    d = await session.api.post("authz", "/v1/check", {"mailbox_id": mailbox_id, "action": "read"})
    return str(d["level"]) if d.get("allowed") and d.get("level") else None


async def self_service(api: Api) -> bool:
    """May an employee add their own mailbox here (the organisation's policy)?"""
    org = await api.maybe(api.get("registry", "/v1/org/mail-settings"))
    return bool(org and org.get("employee_self_service", "off") != "off")


async def audit_tail(api: Api, aggregate_id: str, n: int = 50) -> list[dict[str, Any]] | None:
    """The newest ``n`` audit entries of one aggregate: one page, newest first."""
    page = await api.maybe(
        api.get("audit", "/v1/audit/events", limit=n, order="desc", aggregate_id=aggregate_id)
    )
    return None if page is None else list(page["items"])


def build_accounts_router(console: Console) -> APIRouter:
    r = APIRouter(prefix="/console", include_in_schema=False, route_class=route_class(console))

    @r.get("")
    async def root() -> Response:
        return Response(status_code=307, headers={"Location": "/console/"})

    @r.get("/")
    async def accounts(
        request: Request,
        q: Annotated[str, Query(max_length=200)] = "",
        state: Annotated[str, Query(max_length=20)] = "",
        protocol: Annotated[str, Query(max_length=20)] = "",
        cursor: Annotated[str, Query(max_length=64)] = "",
    ) -> Response:
        session = await console.session(request)
        state = state if state in STATE_FILTERS else ""
        protocol = protocol if protocol in PROTOCOLS else ""
        rows, next_cursor = await library.rows(
            session,
            q=q.strip(),
            state=state,
            protocol=protocol,
            cursor=cursor,
            page_size=console.settings.page_size,
        )
        may_add = session.is_admin or await self_service(session.api)
        return console.page(
            request,
            session,
            "library.html",
            rows=rows,
            next_cursor=next_cursor,
            q=q,
            state=state,
            protocol=protocol,
            protocols=PROTOCOLS,
            state_filters=STATE_FILTERS,
            may_add=may_add,
            ids=",".join(r.id for r in rows),
        )

    @r.get("/accounts/status")
    async def live_status(
        request: Request, ids: Annotated[str, Query(max_length=20_000)] = ""
    ) -> Response:
        """htmx polls this: the state and last-sync cells of the rows on the page, swapped in
        out of band (the rest of the page stays as it is)."""
        session = await console.session(request)
        wanted = [i for i in ids.split(",") if _ID.match(i)][:500]
        found = await library.statuses(session.api)
        cells = [(i, found.get(i)) for i in wanted]
        return console.page(request, session, "_status_oob.html", cells=cells)

    @r.get("/mailboxes/{mailbox_id}")
    async def mailbox(request: Request, mailbox_id: str) -> Response:
        session = await console.session(request)
        check_id(mailbox_id)
        api = session.api
        account = await api.get("registry", f"/v1/accounts/{mailbox_id}")
        level = await level_on(session, mailbox_id)
        owner_self = account.get("owner_id") == session.subject
        configure = session.is_admin or level == "configure" or owner_self
        base = f"/v1/mailboxes/{mailbox_id}"
        results: list[Any] = await asyncio.gather(
            api.maybe(api.get("sync", f"/v1/sync/mailboxes/{mailbox_id}")),
            api.maybe(api.get("sync", f"/v1/sync/mailboxes/{mailbox_id}/history", limit=50)),
            api.maybe(api.get("registry", f"/v1/accounts/{mailbox_id}/signatures")),
            api.maybe(api.get("authz", f"{base}/access")) if configure else _none(),
            library.directory(api),
            api.maybe(api.get("registry", "/v1/departments")) if configure else _none(),
            audit_tail(api, mailbox_id),
            api.maybe(api.get("sender", f"{base}/sending")),
            api.maybe(api.get("sender", f"{base}/autoreply")),
        )
        sync, history, signatures, access, people, departments, trail, sending, autoreply = results
        state, detail = library.state_of(account, (sync or {}).get("status"))
        return console.page(
            request,
            session,
            "mailbox.html",
            account=account,
            level="owner" if owner_self and not level else level,
            configure=configure,
            state=state,
            state_detail=detail,
            sync=sync,
            history=(history or {}).get("items", []),
            signatures=signatures,
            access=access,
            people=people,
            active_people=sorted(
                (p for p in people.values() if p["status"] == "active"), key=lambda p: p["name"]
            ),
            departments=[d["name"] for d in (departments or {}).get("items", [])],
            trail=trail,
            sending=sending,
            autoreply=autoreply,
        )

    return r


async def _none() -> None:
    return None
