"""Sync HTTP API: mailbox health, per-folder state, status history, sync now.

The tenant comes from the token. A tenant admin sees every mailbox of the tenant; anyone else
only mailboxes they may read (:class:`services.sync.ports.Permissions`). A mailbox of another
tenant, or one the caller may not read, is answered 404 / 403 without telling more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel

from libs.common.auth import Principal
from libs.common.errors import Conflict, Forbidden, MailroomError, NotFound
from libs.common.events.sync import FailureClass, SyncState
from libs.common.http import ERRORS
from libs.common.service import Caller
from libs.common.store.database import Database
from services.sync.models import StatusRow, utc
from services.sync.ports import Permissions
from services.sync.repository import SyncRepository
from services.sync.scheduler import SyncEngine


class MailboxStatus(BaseModel):
    mailbox_id: str
    address: str | None
    protocol: str | None
    state: SyncState
    since: datetime
    last_error: str | None
    failure_class: FailureClass | None
    failures: int
    down_since: datetime | None
    last_success_at: datetime | None
    next_sync_at: datetime | None
    last_mail_at: datetime | None
    idle: bool
    message_count: int | None


class StatusPage(BaseModel):
    items: list[MailboxStatus]
    next_cursor: str | None


class FolderOut(BaseModel):
    folder: str
    uidvalidity: int
    uidnext: int | None
    last_uid: int
    messages: int
    known: int
    last_synced_at: datetime


class Quota(BaseModel):
    used_kb: int
    limit_kb: int
    at: datetime | None


class MailboxDetail(BaseModel):
    status: MailboxStatus
    folders: list[FolderOut]
    quota: Quota | None
    message_count: int | None


class HistoryEntry(BaseModel):
    at: datetime
    state: SyncState
    previous: SyncState | None
    detail: str


class History(BaseModel):
    mailbox_id: str
    items: list[HistoryEntry]


class SyncAccepted(BaseModel):
    mailbox_id: str
    accepted: bool = True


@dataclass
class ApiContext:
    db: Database
    engine: SyncEngine
    permissions: Permissions


def _status(r: StatusRow, engine: SyncEngine | None = None) -> MailboxStatus:
    h = r.health
    last_success, next_sync = h.last_success_at, r.next_sync_at
    w = engine.watchers.get((r.tenant_id, r.account_id)) if engine is not None else None
    if w is not None and w.live_success_at is not None and h.state == "online":
        if last_success is None or w.live_success_at > last_success:
            last_success, next_sync = w.live_success_at, w.live_next_at
    return MailboxStatus(
        mailbox_id=r.account_id,
        address=r.address,
        protocol=r.protocol,
        state=h.state,
        since=h.since,
        last_error=h.last_error,
        failure_class=h.failure_class,
        failures=h.failures,
        down_since=h.down_since,
        last_success_at=last_success,
        next_sync_at=next_sync,
        last_mail_at=r.last_mail_at,
        idle=r.idle,
        message_count=r.message_count,
    )


def build_router(c: ApiContext) -> APIRouter:
    r = APIRouter(tags=["sync"], responses=ERRORS)  # type: ignore[arg-type]

    async def require_read(caller: Principal, mailbox_id: str) -> StatusRow:
        async with c.db.read() as conn:
            row = await SyncRepository(conn, caller.tenant_id).status(mailbox_id)
        if row is None:
            raise NotFound(f"no synced mailbox {mailbox_id}", code="mailbox_not_found")
        if not await c.permissions.may_read(caller, mailbox_id):
            raise Forbidden("you may not read this mailbox", code="forbidden")
        return row

    @r.get("/v1/sync/status", response_model=StatusPage)
    async def list_status(
        caller: Caller,
        state: SyncState | None = None,
        mailbox: str | None = None,
        cursor: str | None = None,
        limit: int = Query(100, ge=1, le=500),
    ) -> StatusPage:
        """Health of the tenant's mailboxes (those the caller may read), by mailbox id."""
        async with c.db.read() as conn:
            rows = await SyncRepository(conn, caller.tenant_id).statuses(
                state=state, mailbox=mailbox, after=cursor, limit=limit
            )
        nxt = rows[-1].account_id if len(rows) == limit else None
        if not caller.is_admin:
            rows = [x for x in rows if await c.permissions.may_read(caller, x.account_id)]
        return StatusPage(items=[_status(x, c.engine) for x in rows], next_cursor=nxt)

    @r.get("/v1/sync/mailboxes/{mailbox_id}", response_model=MailboxDetail)
    async def mailbox(caller: Caller, mailbox_id: str) -> MailboxDetail:
        row = await require_read(caller, mailbox_id)
        async with c.db.read() as conn:
            repo = SyncRepository(conn, caller.tenant_id)
            folders = await repo.folders(mailbox_id)
            quota_row = await repo.quota(mailbox_id)
        quota = (
            Quota(used_kb=quota_row[0], limit_kb=quota_row[1], at=quota_row[2])
            if quota_row is not None
            else None
        )
        return MailboxDetail(
            status=_status(row, c.engine),
            folders=[
                FolderOut(
                    folder=f.folder,
                    uidvalidity=f.uidvalidity,
                    uidnext=f.uidnext,
                    last_uid=f.last_uid,
                    messages=f.exists,
                    known=f.known,
                    last_synced_at=f.last_synced_at,
                )
                for f in folders.values()
            ],
            quota=quota,
            message_count=row.message_count,
        )

    @r.get("/v1/sync/mailboxes/{mailbox_id}/history", response_model=History)
    async def history(
        caller: Caller, mailbox_id: str, limit: int = Query(100, ge=1, le=1000)
    ) -> History:
        await require_read(caller, mailbox_id)
        async with c.db.read() as conn:
            rows = await SyncRepository(conn, caller.tenant_id).history(mailbox_id, limit)
        return History(
            mailbox_id=mailbox_id,
            items=[
                HistoryEntry(at=utc(x.at), state=x.state, previous=x.previous, detail=x.detail)
                for x in rows
            ],
        )

    @r.post("/v1/accounts/{mailbox_id}/sync", status_code=202, response_model=SyncAccepted)
    async def sync_now(caller: Caller, mailbox_id: str) -> SyncAccepted:
        """Sync this mailbox now (its watcher wakes; the result shows in its status)."""
        row = await require_read(caller, mailbox_id)
        if row.health.state == "disabled":
            raise Conflict("the account is disabled", code="account_disabled")
        if not c.engine.force(caller.tenant_id, mailbox_id):
            raise MailroomError(
                "this worker is not watching the mailbox", code="not_watched", status=409
            )
        return SyncAccepted(mailbox_id=mailbox_id)

    return r
