"""Audit HTTP API: query, verify, replay and export a tenant's trail.

Tenant admins read everything; others read one mailbox's entries with Read on it
(``services.audit.access``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.audit import domain
from services.audit.access import MAILBOX_AGGREGATES, AuditAccess
from services.audit.cursor import Order, decode, read_page
from services.audit.repository import AuditQuery, AuditRepository


class AuditEntry(BaseModel):
    position: int
    tenant_seq: int
    entry_hash: str
    chain_hash: str
    event: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = Field(
        description="the next page in the requested order (None: nothing more)"
    )
    prev_cursor: str | None = Field(
        None, description="the page before this one, in the same order (None: the first page)"
    )


class VerifyResult(BaseModel):
    ok: bool
    checked: int
    first_bad_position: int | None = None
    first_bad_tenant_seq: int | None = None
    first_bad_event_id: str | None = None
    problem: str | None = None


def _entry(e: domain.StoredEntry) -> AuditEntry:
    return AuditEntry(
        position=e.position,
        tenant_seq=e.tenant_seq,
        entry_hash=e.entry_hash.hex(),
        chain_hash=e.chain_hash.hex(),
        event=json.loads(e.canonical),
    )


def build_router(db: Database, access: AuditAccess | None = None) -> APIRouter:
    access = access or AuditAccess()
    r = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERRORS)  # type: ignore[arg-type]

    @r.get("/events", response_model=AuditPage)
    async def list_events(
        caller: Caller,
        aggregate_id: str | None = None,
        aggregate_type: str | None = None,
        type: str | None = Query(None, description="event name (any version) or full type"),
        actor: str | None = None,
        correlation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Order = Query("asc", description="asc: chain order; desc: newest first"),
        cursor: str | None = Query(None, description="next_cursor or prev_cursor of a page"),
        limit: int = Query(100, ge=1, le=1000),
    ) -> AuditPage:
        """Entries by filter, in chain order or newest first (``order=desc``), paged by an
        opaque cursor both ways. A tenant admin queries the whole trail; anyone else must name
        a mailbox (``aggregate_id``) they may read, and gets that mailbox's entries only."""
        await access.require_mailbox_read(caller, aggregate_id)
        at = decode(cursor)
        types: tuple[str, ...] | None = None
        if not caller.is_admin:
            types = MAILBOX_AGGREGATES
        q = AuditQuery(
            aggregate_id, aggregate_type, type, actor, correlation_id, since, until, types
        )
        async with db.read() as conn:
            repo = AuditRepository(conn, caller.tenant_id)

            async def fetch(
                n: int, after: int | None, before: int | None, newest_first: bool
            ) -> list[domain.StoredEntry]:
                return await repo.page(q, n, after=after, before=before, newest_first=newest_first)

            page = await read_page(fetch, order, at, limit)
        return AuditPage(
            items=[_entry(e) for e in page.items],
            next_cursor=page.next_cursor,
            prev_cursor=page.prev_cursor,
        )

    @r.get("/verify", response_model=VerifyResult)
    async def verify(caller: Caller) -> VerifyResult:
        caller.require_admin()
        async with db.read() as conn:
            repo = AuditRepository(conn, caller.tenant_id)
            verdict = await _verify(repo)
            bad_id = (
                await repo.event_id_at(verdict.first_bad_position)
                if verdict.first_bad_position is not None
                else None
            )
        return VerifyResult(**_asdict(verdict), first_bad_event_id=bad_id)

    @r.get("/export", response_class=StreamingResponse)
    async def export(caller: Caller) -> StreamingResponse:
        """The tenant's whole trail as JSON Lines, in chain order, with hashes."""
        caller.require_admin()

        async def lines() -> AsyncIterator[bytes]:
            async with db.read() as conn:
                async for e in AuditRepository(conn, caller.tenant_id).chain():
                    yield _entry(e).model_dump_json().encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @r.get("/replay", response_class=StreamingResponse)
    async def replay(
        caller: Caller, after: int = Query(0, ge=0), limit: int = Query(10_000, ge=1, le=100_000)
    ) -> StreamingResponse:
        """The tenant's event envelopes after a position, as JSON Lines (for rebuilds)."""
        caller.require_admin()
        async with db.read() as conn:
            rows = await AuditRepository(conn, caller.tenant_id).page(
                AuditQuery(), limit, after=after
            )
        body = b"".join(
            json.dumps({"position": e.position, "event": json.loads(e.canonical)}).encode() + b"\n"
            for e in rows
        )
        return StreamingResponse(iter([body]), media_type="application/x-ndjson")

    return r


def _asdict(v: domain.Verdict) -> dict[str, Any]:
    return {
        "ok": v.ok,
        "checked": v.checked,
        "first_bad_position": v.first_bad_position,
        "first_bad_tenant_seq": v.first_bad_tenant_seq,
        "problem": v.problem,
    }


async def _verify(repo: AuditRepository) -> domain.Verdict:
    walker = domain.ChainWalker()
    async for e in repo.chain():
        if not walker.feed(e):
            break
    return walker.verdict()
