"""The audit log (filters, chain verification) and the sync dashboard (counts per state,
mailboxes failing longest first, a chart of sync failures over time)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from libs.common.events import CATALOGUE
from services.console import library
from services.console.chart import failures_chart
from services.console.client import ApiError
from services.console.pages_people import admin_only
from services.console.web import Console, route_class

PER_PAGE = 100
MOST_ENTRIES = 5000
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
        page: Annotated[int, Query(ge=1, le=1000)] = 1,
    ) -> Response:
        session = console.session(request)
        admin_only(session)
        api = session.api
        names = CATALOGUE.names()
        filters = {
            "aggregate_id": mailbox.strip(),
            "actor": actor.strip(),
            "type": type if type in names else "",
            "since": day_bound(since, end=False),
            "until": day_bound(until, end=True),
        }
        entries, verdict, accounts, people = await asyncio.gather(
            api.all_pages(
                "audit", "/v1/audit/events", limit=1000, most=MOST_ENTRIES // 1000, **filters
            ),
            api.get("audit", "/v1/audit/verify"),
            api.all_pages("registry", "/v1/accounts", limit=500, most=2),
            library.directory(api),
        )
        newest = list(reversed(entries))
        shown = newest[(page - 1) * PER_PAGE : page * PER_PAGE]
        return console.page(
            request,
            session,
            "audit.html",
            entries=shown,
            total=len(entries),
            capped=len(entries) >= MOST_ENTRIES,
            page=page,
            more=len(newest) > page * PER_PAGE,
            verdict=verdict,
            names=names,
            accounts=sorted(accounts, key=lambda a: a["address"]),
            people=sorted(people.values(), key=lambda p: p["name"].lower()),
            f={"mailbox": mailbox, "actor": actor, "type": type, "since": since, "until": until},
            addresses={a["id"]: a["address"] for a in accounts},
        )

    @r.get("/sync")
    async def sync(request: Request, days: Annotated[int, Query(ge=1, le=30)] = 7) -> Response:
        session = console.session(request)
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
