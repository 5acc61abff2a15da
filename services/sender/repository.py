"""Every query of the sender. ``SenderRepository`` is scoped to one tenant; the dispatcher's
queries (``Queue``) look across tenants for due work and then act on one send by id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.registry import AccountSettings
from services.sender import domain
from services.sender.tables import (
    employees,
    mailboxes,
    personal_signatures,
    sends,
    signatures,
)


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time the sender stores is UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SendRecord:
    send_id: str
    tenant_id: str
    mailbox_id: str
    idempotency_key: str
    fingerprint: str
    actor: str
    correlation_id: str
    on_behalf_of: str | None
    state: str
    message_id: str
    mail_from: str
    recipients: list[str]
    bcc: list[str]
    size: int
    attempts: int
    next_attempt_at: datetime
    claim_token: str | None
    reason_class: str | None
    detail: str
    refused: list[str]
    created_at: datetime
    finished_at: datetime | None
    copy_state: str
    copy_attempts: int
    copy_token: str | None

    @property
    def status(self) -> domain.PublicStatus:
        return domain.public_status(self.state, self.attempts)


_RECORD_COLUMNS = [sends.c[f] for f in SendRecord.__dataclass_fields__]


def _record(r: Any) -> SendRecord:
    m = {k: v for k, v in r._mapping.items() if k != "raw"}
    for f in ("recipients", "bcc", "refused"):
        m[f] = json.loads(m[f])
    for f in ("next_attempt_at", "created_at", "finished_at"):
        m[f] = utc(m[f])
    return SendRecord(**m)


def record_from_row(tenant_id: str, row: dict[str, Any]) -> SendRecord:
    """The record of a row as ``insert_send`` wrote it (no read back needed)."""
    return _record(_Row({**row, "tenant_id": tenant_id}))


class _Row:
    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = {f: mapping.get(f) for f in SendRecord.__dataclass_fields__}


def mailbox_from_row(r: Any) -> domain.Mailbox:
    return domain.Mailbox(
        tenant_id=r.tenant_id,
        mailbox_id=r.mailbox_id,
        address=r.address,
        protocol=r.protocol,
        owner_id=r.owner_id,
        status=r.status,
        settings=AccountSettings.model_validate_json(r.settings),
        sending_stopped_by=r.sending_stopped_by,
    )


class SenderRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    async def mailbox(self, mailbox_id: str, *, lock: bool = False) -> domain.Mailbox | None:
        t = mailboxes
        q = select(t).where(t.c.tenant_id == self.tenant_id, t.c.mailbox_id == mailbox_id)
        if lock and self.conn.dialect.name == "postgresql":
            q = q.with_for_update()  # serialises limit checks of one mailbox across replicas
        row = (await self.conn.execute(q)).first()
        return mailbox_from_row(row) if row is not None else None

    async def employee(self, employee_id: str) -> tuple[domain.Person, bool] | None:
        """(name and email, offboarded) of an employee."""
        t = employees
        q = select(t.c.name, t.c.email, t.c.offboarded).where(
            t.c.tenant_id == self.tenant_id, t.c.employee_id == employee_id
        )
        row = (await self.conn.execute(q)).first()
        return (domain.Person(row.name, row.email), bool(row.offboarded)) if row else None

    async def sending_stopped(self, mailbox_id: str) -> str | None:
        """The offboarded employee whose personal mailbox this is, while its sending stops."""
        t = mailboxes
        q = select(t.c.sending_stopped_by).where(
            t.c.tenant_id == self.tenant_id, t.c.mailbox_id == mailbox_id
        )
        return (await self.conn.execute(q)).scalar()

    async def employee_details(self, employee_id: str) -> dict[str, str] | None:
        """Name, email, title and department of an employee (signature placeholders)."""
        t = employees
        q = select(t.c.name, t.c.email, t.c.title, t.c.department).where(
            t.c.tenant_id == self.tenant_id, t.c.employee_id == employee_id
        )
        row = (await self.conn.execute(q)).first()
        if row is None:
            return None
        return {
            "name": row.name,
            "email": row.email,
            "title": row.title or "",
            "department": row.department or "",
        }

    async def signature(self, mailbox_id: str, name: str) -> tuple[str, str] | None:
        """(HTML, text) of a mailbox signature: ``default`` or a named alternate."""
        t = signatures
        q = select(t.c.html, t.c.text).where(
            t.c.tenant_id == self.tenant_id, t.c.mailbox_id == mailbox_id, t.c.name == name
        )
        row = (await self.conn.execute(q)).first()
        return (row.html, row.text) if row is not None else None

    async def personal_signature(self, employee_id: str) -> tuple[str, str] | None:
        t = personal_signatures
        q = select(t.c.html, t.c.text).where(
            t.c.tenant_id == self.tenant_id, t.c.employee_id == employee_id
        )
        row = (await self.conn.execute(q)).first()
        return (row.html, row.text) if row is not None else None

    async def by_key(self, mailbox_id: str, key: str) -> SendRecord | None:
        q = select(*_RECORD_COLUMNS).where(
            sends.c.tenant_id == self.tenant_id,
            sends.c.mailbox_id == mailbox_id,
            sends.c.idempotency_key == key,
        )
        row = (await self.conn.execute(q)).first()
        return _record(row) if row is not None else None

    async def send(self, mailbox_id: str, send_id: str) -> SendRecord | None:
        q = select(*_RECORD_COLUMNS).where(
            sends.c.tenant_id == self.tenant_id,
            sends.c.mailbox_id == mailbox_id,
            sends.c.send_id == send_id,
        )
        row = (await self.conn.execute(q)).first()
        return _record(row) if row is not None else None

    async def limit_verdict(self, mailbox: domain.Mailbox, now: datetime) -> domain.LimitVerdict:
        """The mailbox's rolling 24 h limit right now (one count; one more row when over)."""
        limit = mailbox.settings.daily_send_limit
        counted = (
            sends.c.tenant_id == self.tenant_id,
            sends.c.mailbox_id == mailbox.mailbox_id,
            sends.c.created_at > now - domain.WINDOW,
            sends.c.state.in_(domain.COUNTED_STATES),
        )
        used = int((await self.conn.execute(select(func.count()).where(*counted))).scalar() or 0)
        rank = domain.blocking_rank(limit, used)
        blocking = None
        if rank is not None:
            q = select(sends.c.created_at).where(*counted).order_by(sends.c.created_at)
            blocking = utc((await self.conn.execute(q.offset(rank).limit(1))).scalar())
        return domain.check_limit(limit, used, blocking, now)

    async def insert_send(self, values: dict[str, Any]) -> None:
        await self.conn.execute(insert(sends).values(tenant_id=self.tenant_id, **values))


class Queue:
    """The durable send queue, across tenants: find due work, claim it, record outcomes."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Sends to (re)deliver: queued and due, or claimed by a replica that went silent."""
        c = sends.c
        q = (
            select(c.send_id)
            .where(
                or_(
                    and_(c.state == "queued", c.next_attempt_at <= now),
                    and_(c.state == "delivering", c.claimed_until < now),
                )
            )
            .order_by(c.next_attempt_at)
            .limit(limit)
        )
        return [r[0] for r in await self.conn.execute(q)]

    async def claim(self, send_id: str, now: datetime, token: str, until: datetime) -> bool:
        """Take a due send for one attempt; exactly one claimant wins (a conditional update)."""
        c = sends.c
        done = await self.conn.execute(
            update(sends)
            .where(
                c.send_id == send_id,
                or_(
                    and_(c.state == "queued", c.next_attempt_at <= now),
                    and_(c.state == "delivering", c.claimed_until < now),
                ),
            )
            .values(
                state="delivering", claim_token=token, claimed_until=until, attempts=c.attempts + 1
            )
        )
        return done.rowcount == 1

    async def claimed(self, send_id: str) -> tuple[SendRecord, bytes] | None:
        q = select(*_RECORD_COLUMNS, sends.c.raw).where(sends.c.send_id == send_id)
        row = (await self.conn.execute(q)).first()
        if row is None or row.raw is None:
            return None
        return _record(row), bytes(row.raw)

    async def finish(self, send_id: str, token: str, values: dict[str, Any]) -> bool:
        """Record an attempt's outcome, if ``token`` still holds the claim."""
        done = await self.conn.execute(
            update(sends)
            .where(sends.c.send_id == send_id, sends.c.claim_token == token)
            .values(claim_token=None, claimed_until=None, **values)
        )
        return done.rowcount == 1

    # --- Sent copies ----------------------------------------------------------------------
    async def due_copies(self, now: datetime, limit: int) -> list[str]:
        c = sends.c
        q = (
            select(c.send_id)
            .where(
                or_(
                    and_(c.copy_state == "pending", c.copy_next_at <= now),
                    and_(c.copy_state == "saving", c.copy_claimed_until < now),
                )
            )
            .order_by(c.copy_next_at)
            .limit(limit)
        )
        return [r[0] for r in await self.conn.execute(q)]

    async def claim_copy(self, send_id: str, now: datetime, token: str, until: datetime) -> bool:
        c = sends.c
        done = await self.conn.execute(
            update(sends)
            .where(
                c.send_id == send_id,
                or_(
                    and_(c.copy_state == "pending", c.copy_next_at <= now),
                    and_(c.copy_state == "saving", c.copy_claimed_until < now),
                ),
            )
            .values(
                copy_state="saving",
                copy_token=token,
                copy_claimed_until=until,
                copy_attempts=c.copy_attempts + 1,
            )
        )
        return done.rowcount == 1

    async def finish_copy(self, send_id: str, token: str, values: dict[str, Any]) -> bool:
        if values.get("copy_state") in ("saved", "failed"):
            values = {**values, "raw": None}  # nothing needs the bytes any more
        done = await self.conn.execute(
            update(sends)
            .where(sends.c.send_id == send_id, sends.c.copy_token == token)
            .values(copy_token=None, copy_claimed_until=None, **values)
        )
        return done.rowcount == 1

    async def purge(self, before: datetime) -> int:
        """Forget finished sends (and so their Idempotency-Keys) older than ``before``."""
        c = sends.c
        done = await self.conn.execute(
            delete(sends).where(
                c.created_at < before,
                c.state.in_(("sent", "failed")),
                c.copy_state.in_(("none", "saved", "failed")),
            )
        )
        return int(done.rowcount or 0)

    async def counts(self) -> dict[str, int]:
        q = select(sends.c.state, func.count()).group_by(sends.c.state)
        return {r[0]: int(r[1]) for r in await self.conn.execute(q)}
