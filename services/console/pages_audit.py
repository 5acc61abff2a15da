"""The audit log (newest first, paged with the audit API's cursor, filters, chain verification)
and the sync dashboard (counts per state, mailboxes failing longest first, a chart of sync
failures over time)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from libs.common.events import CATALOGUE
from services.console import library
from services.console.chart import failures_chart
from services.console.client import ApiError
from services.console.pages_people import admin_only
from services.console.web import Console, route_class

PER_PAGE = 100
FAILING = ("offline", "auth_failed", "tls_error")


def day_bound(value: str, *, end: bool) -> str | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise ApiError(422, "invalid_date", "dates are YYYY-MM-DD") from None
    moment = datetime.combine(day, time.max if end else time.min, tzinfo=UTC)
    return moment.isoformat()


def page_link(filters: dict[str, str], cursor: str | None) -> str | None:
    """The audit page with the same filters at ``cursor`` ("": the newest; None: no link)."""
    if cursor is None:
        return None
    query = {k: v for k, v in filters.items() if v}
    if cursor:
        query["cursor"] = cursor
    return "/console/audit" + (f"?{urlencode(query)}" if query else "")


def build_audit_router(console: Console) -> APIRouter:
    r = APIRouter(prefix="/console", include_in_schema=False, route_class=route_class(console))

    @r.get("/audit")
    async def audit(
        request: Request,
        mailbox: Annotated[str, Query(max_length=64)] = "",
        actor: Annotated[str, Query(max_length=200)] = "",
        type: Annotated[str, Query(max_length=100)] = "",
        since: Annotated[str, Query(max_length=10)] = "",
        until: Annotated[str, Query(max_length=10)] = "",
        cursor: Annotated[str, Query(max_length=100)] = "",
    ) -> Response:
        """One page of the trail, newest first; Newer/Older carry the API's cursor."""
        session = await console.session(request)
        admin_only(session)
        api = session.api
        names = CATALOGUE.names()
        f = {
            "mailbox": mailbox.strip(),
            "actor": actor.strip(),
            "type": type if type in names else "",
            "since": since,
            "until": until,
        }
        start, end = day_bound(since, end=False), day_bound(until, end=True)
        page, verdict, accounts, people = await asyncio.gather(
            api.get(
                "audit",
                "/v1/audit/events",
                order="desc",
                limit=PER_PAGE,
                cursor=cursor,
                aggregate_id=f["mailbox"],
                actor=f["actor"],
                type=f["type"],
                since=start,
                until=end,
            ),
            api.get("audit", "/v1/audit/verify"),
            api.all_pages("registry", "/v1/accounts", limit=500, most=2),
            library.directory(api),
        )
        return console.page(
            request,
            session,
            "audit.html",
            entries=page["items"],
            newer=page_link(f, page.get("prev_cursor")),
            older=page_link(f, page.get("next_cursor")),
            newest=page_link(f, "") if cursor and page.get("prev_cursor") else None,
            verdict=verdict,
            names=names,
            accounts=sorted(accounts, key=lambda a: a["address"]),
            people=sorted(people.values(), key=lambda p: p["name"].lower()),
            f=f,
            addresses={a["id"]: a["address"] for a in accounts},
        )

    @r.get("/sync")
    async def sync(request: Request, days: Annotated[int, Query(ge=1, le=30)] = 7) -> Response:
        session = await console.session(request)
        admin_only(session)
        api = session.api
        days = days if days in (1, 7, 30) else 7
        since = (datetime.now(UTC) - timedelta(days=days)).isoformat()
        statuses, failures = await asyncio.gather(
            api.all_pages("sync", "/v1/sync/status", limit=500),
            api.all_pages(
                "audit", "/v1/audit/events", limit=1000, most=10, type="SyncFailed", since=since
            ),
        )
        counts = {
            s: 0 for s in ("online", "syncing", "offline", "auth_failed", "tls_error", "disabled")
        }
        for s in statuses:
            counts[s["state"]] = counts.get(s["state"], 0) + 1
        failing = sorted(
            (s for s in statuses if s["state"] in FAILING),
            key=lambda s: s.get("down_since") or s.get("since") or "",
        )
        return console.page(
            request,
            session,
            "sync.html",
            counts=counts,
            total=len(statuses),
            failing=failing,
            chart=failures_chart([e["event"] for e in failures], days),
            days=days,
        )

    return r
