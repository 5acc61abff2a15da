"""Every query of the autoresponder. ``AutoreplyRepository`` is scoped to one tenant; the
responder's queue (``PendingReplies``) looks across tenants for due work, then acts on one row
by its key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.store.eventstore import EventStore
from services.sender.autoreply import Rule
from services.sender.repository import utc
from services.sender.tables import autoreplies, autoreply_pending, autoreply_replies, mailboxes


@dataclass(frozen=True, slots=True)
class Stored:
    """An autoreply as stored: the rule and who set it how."""

    mailbox_id: str
    rule: Rule
    source: str
    employee_id: str | None
    set_by: str

    @property
    def set_at(self) -> datetime:
        assert self.rule.set_at is not None
        return self.rule.set_at


def _stored(r: Any) -> Stored:
    rule = Rule(
        text=r.text,
        html=r.html,
        subject=r.subject,
        starts_at=utc(r.starts_at),
        ends_at=utc(r.ends_at),
        interval_days=r.interval_days,
        set_at=utc(r.set_at),
    )
    return Stored(r.mailbox_id, rule, r.source, r.employee_id, r.set_by)


class AutoreplyRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    def _key(self, mailbox_id: str) -> tuple[Any, ...]:
        t = autoreplies
        return (t.c.tenant_id == self.tenant_id, t.c.mailbox_id == mailbox_id)

    async def hold(self, mailbox_id: str) -> None:
        """On PostgreSQL, lock the mailbox row until the transaction ends: one writer per
        mailbox at a time (its event stream, its "once per N days" state)."""
        if self.conn.dialect.name != "postgresql":
            return  # SQLite: the transaction already holds the single write lock
        t = mailboxes
        q = select(t.c.mailbox_id).where(t.c.tenant_id == self.tenant_id)
        await self.conn.execute(q.where(t.c.mailbox_id == mailbox_id).with_for_update())

    async def get(self, mailbox_id: str) -> Stored | None:
        row = (await self.conn.execute(select(autoreplies).where(*self._key(mailbox_id)))).first()
        return _stored(row) if row is not None else None

    async def put(self, mailbox_id: str, values: dict[str, Any]) -> None:
        await self.conn.execute(delete(autoreplies).where(*self._key(mailbox_id)))
        await self.conn.execute(
            insert(autoreplies).values(tenant_id=self.tenant_id, mailbox_id=mailbox_id, **values)
        )
        # A new autoreply answers everyone once again (as a changed Sieve vacation does).
        await self.forget_replies(mailbox_id)

    async def clear(self, mailbox_id: str) -> None:
        await self.conn.execute(delete(autoreplies).where(*self._key(mailbox_id)))
        await self.forget_replies(mailbox_id)

    async def set_by_offboarding(self, employee_id: str) -> list[str]:
        """Mailboxes whose autoreply the offboarding of ``employee_id`` set (and nobody has
        changed since)."""
        t = autoreplies
        q = select(t.c.mailbox_id).where(
            t.c.tenant_id == self.tenant_id,
            t.c.source == "offboarding",
            t.c.employee_id == employee_id,
        )
        return sorted(r[0] for r in await self.conn.execute(q))

    # --- once per correspondent per N days ------------------------------------------------
    async def last_replied(self, mailbox_id: str, correspondent: str) -> datetime | None:
        t = autoreply_replies
        q = select(t.c.replied_at).where(
            t.c.tenant_id == self.tenant_id,
            t.c.mailbox_id == mailbox_id,
            t.c.correspondent == correspondent,
        )
        return utc((await self.conn.execute(q)).scalar())

    async def replied(self, mailbox_id: str, correspondent: str, at: datetime) -> None:
        t = autoreply_replies
        done = await self.conn.execute(
            update(t)
            .where(
                t.c.tenant_id == self.tenant_id,
                t.c.mailbox_id == mailbox_id,
                t.c.correspondent == correspondent,
            )
            .values(replied_at=at)
        )
        if done.rowcount == 0:
            await self.conn.execute(
                insert(t).values(
                    tenant_id=self.tenant_id,
                    mailbox_id=mailbox_id,
                    correspondent=correspondent,
                    replied_at=at,
                )
            )

    async def forget_replies(self, mailbox_id: str) -> None:
        t = autoreply_replies
        await self.conn.execute(
            delete(t).where(t.c.tenant_id == self.tenant_id, t.c.mailbox_id == mailbox_id)
        )

    # --- the reply waiting to be submitted -------------------------------------------------
    async def queue(self, mailbox_id: str, key: str, message: str, correlation_id: str,
                    now: datetime) -> bool:  # fmt: skip
        """Queue a reply for the responder; False if one with this key is already queued."""
        t = autoreply_pending
        q = select(t.c.idempotency_key).where(
            t.c.tenant_id == self.tenant_id,
            t.c.mailbox_id == mailbox_id,
            t.c.idempotency_key == key,
        )
        if (await self.conn.execute(q)).first() is not None:
            return False
        await self.conn.execute(
            insert(t).values(
                tenant_id=self.tenant_id,
                mailbox_id=mailbox_id,
                idempotency_key=key,
                message=message,
                correlation_id=correlation_id,
                created_at=now,
                next_at=now,
                attempts=0,
            )
        )
        return True

    # --- the mailbox's own events ----------------------------------------------------------
    async def append(
        self, store: EventStore, mailbox_id: str, ctx: CommandContext, event: Event
    ) -> Envelope:
        """Append ``event`` to the mailbox's stream (with its outbox row); the caller holds
        the mailbox (``hold``), so the version read here is the one to continue."""
        version = (await store.versions(self.conn, [mailbox_id]))[mailbox_id] + 1
        env = Envelope.wrap(event, ctx, aggregate_id=mailbox_id, aggregate_version=version)
        await store.insert(self.conn, [env])
        return env


@dataclass(frozen=True, slots=True)
class PendingReply:
    tenant_id: str
    mailbox_id: str
    idempotency_key: str
    message: str
    correlation_id: str
    attempts: int


class PendingReplies:
    """Replies decided by the mail consumer and not yet handed to the send path."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def due(self, now: datetime, limit: int) -> list[PendingReply]:
        t = autoreply_pending
        q = select(t).where(t.c.next_at <= now).order_by(t.c.next_at).limit(limit)
        return [
            PendingReply(
                r.tenant_id, r.mailbox_id, r.idempotency_key, r.message, r.correlation_id,
                r.attempts,
            )
            for r in await self.conn.execute(q)
        ]  # fmt: skip

    def _key(self, p: PendingReply) -> Any:
        t = autoreply_pending
        return and_(
            t.c.tenant_id == p.tenant_id,
            t.c.mailbox_id == p.mailbox_id,
            t.c.idempotency_key == p.idempotency_key,
        )

    async def claim(self, p: PendingReply, now: datetime, until: datetime) -> bool:
        """Take the row until ``until`` (a replica that dies leaves it to the next one)."""
        t = autoreply_pending
        done = await self.conn.execute(
            update(t)
            .where(self._key(p), t.c.next_at <= now, t.c.attempts == p.attempts)
            .values(next_at=until, attempts=p.attempts + 1)
        )
        return done.rowcount == 1

    async def done(self, p: PendingReply) -> None:
        await self.conn.execute(delete(autoreply_pending).where(self._key(p)))

    async def later(self, p: PendingReply, at: datetime) -> None:
        t = autoreply_pending
        await self.conn.execute(update(t).where(self._key(p)).values(next_at=at))

    async def forget_old_replies(self, before: datetime) -> int:
        """Maintenance across tenants: whom we answered before ``before`` no longer matters
        (longer ago than any interval)."""
        t = autoreply_replies
        done = await self.conn.execute(delete(t).where(t.c.replied_at < before))
        return int(done.rowcount or 0)
