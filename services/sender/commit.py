"""Group commit of the sender's two writes per message: the intent and the outcome.

Sends that are recorded at the same moment share one transaction (as ``Database.commit`` does
for events): the first caller to get the lock writes every pending intent (or outcome) with a
handful of statements, each item checked on its own. If the shared transaction fails (a
duplicate Idempotency-Key meets UNIQUE, say), every item is written alone, so one cannot fail
another. An item's own refusal (over the limit, mailbox disabled, claim lost) is its result,
not a failure of the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Boolean, and_, bindparam, case, insert, null, or_, select, update

from libs.common.errors import Conflict, NotFound
from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.sender import SendFailed
from libs.common.store.database import Database, Tx
from services.sender import domain
from services.sender.offboarding import stopped
from services.sender.ports import LimitReached, Requester
from services.sender.repository import SenderRepository, SendRecord, mailbox_from_row
from services.sender.tables import mailboxes, sends

T = TypeVar("T")


class _Split(Exception):
    """The batch cannot be written together: write its items one by one."""


class KeyExists(Exception):
    """The Idempotency-Key is already recorded for the mailbox: answer the recorded send."""


class Grouped(Generic[T]):
    def __init__(self, db: Database, write: Callable[[Tx, list[T]], Awaitable[list[Any]]]) -> None:
        self.db = db
        self._write = write
        self._lock = asyncio.Lock()
        self._pending: list[tuple[T, asyncio.Future[Any]]] = []
        self.transactions = 0
        self.items = 0

    async def run(self, item: T) -> Any:
        """Write ``item`` (with whatever else is pending); return its result or raise its
        exception."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        async with self._lock:
            if not future.done():
                batch, self._pending = self._pending, []
                await self._batch(batch)
        return future.result()

    async def _batch(self, batch: list[tuple[T, asyncio.Future[Any]]]) -> None:
        self.transactions += 1
        self.items += len(batch)
        try:
            if len(batch) == 1:
                raise _Split
            async with self.db.transaction() as tx:
                results = await self._write(tx, [item for item, _ in batch])
        except Exception:
            for item, future in batch:
                try:
                    async with self.db.transaction() as tx:
                        [result] = await self._write(tx, [item])
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    _settle(future, result)
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


async def append_events(
    tx: Tx, db: Database, items: Sequence[tuple[Requester, str, Event]]
) -> None:
    """Append events to their mailboxes' streams (with outbox rows). Versions are read in this
    transaction, which holds the mailboxes (row locks, or SQLite's write lock); should two
    writers still race, UNIQUE(aggregate_id, aggregate_version) fails the second."""
    if not items:
        return
    versions = await db.store.versions(tx.conn, sorted({m for _, m, _ in items}))
    envs = []
    for who, mailbox_id, event in items:
        versions[mailbox_id] += 1
        ctx = CommandContext(who.tenant_id, who.actor, who.correlation_id)
        envs.append(
            Envelope.wrap(
                event, ctx, aggregate_id=mailbox_id, aggregate_version=versions[mailbox_id]
            )
        )
    await db.store.insert(tx.conn, envs)
    tx.appended.extend(envs)  # wakes the outbox relay after the commit


async def _mailboxes(tx: Tx, keys: set[tuple[str, str]]) -> dict[tuple[str, str], domain.Mailbox]:
    """The mailboxes as they are now; on PostgreSQL their rows are locked (in a fixed order:
    no deadlocks between replicas) until the transaction ends."""
    t = mailboxes
    cond = or_(*(and_(t.c.tenant_id == tn, t.c.mailbox_id == mb) for tn, mb in sorted(keys)))
    q = select(t).where(cond).order_by(t.c.tenant_id, t.c.mailbox_id)
    if tx.conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return {(r.tenant_id, r.mailbox_id): mailbox_from_row(r) for r in await tx.conn.execute(q)}


# --- intents ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Intent:
    who: Requester
    mailbox: domain.Mailbox
    row: dict[str, Any]
    now: datetime


def sendable(mailbox: domain.Mailbox | None, mailbox_id: str) -> Exception | None:
    if mailbox is None:
        return NotFound(f"no mailbox {mailbox_id}")
    if mailbox.status != "active":
        return Conflict(
            f"mailbox {mailbox_id} is {mailbox.status}", code=f"mailbox_{mailbox.status}"
        )
    if mailbox.outgoing is None:
        return Conflict("the account has no outgoing server", code="no_outgoing_server")
    return None


def intent_writer(db: Database) -> Callable[[Tx, list[Intent]], Awaitable[list[Any]]]:
    async def write(tx: Tx, items: list[Intent]) -> list[Any]:
        keys = {(i.who.tenant_id, i.mailbox.mailbox_id, i.row["idempotency_key"]) for i in items}
        if len(keys) < len(items):
            raise _Split  # the same key twice: the second replays the first
        # Exactly now (the caller's copy may be a few seconds old), and locked on PostgreSQL.
        current = await _mailboxes(tx, {(i.who.tenant_id, i.mailbox.mailbox_id) for i in items})
        results: list[Any] = []
        bulk: list[dict[str, Any]] = []
        events: list[tuple[Requester, str, Event]] = []
        for it in items:
            mb_id = it.mailbox.mailbox_id
            mailbox = current.get((it.who.tenant_id, mb_id))
            refusal = sendable(mailbox, mb_id)
            if refusal is None and mailbox is not None and not it.who.automatic:
                refusal = stopped(mailbox)  # offboarding, exactly now
            if refusal is not None or mailbox is None:
                results.append(refusal)
                continue
            row = {**it.row, "tenant_id": it.who.tenant_id}
            if mailbox.settings.daily_send_limit is None:
                bulk.append(row)
                results.append(True)
                continue
            # Limited mailboxes one at a time, so each count sees the sends before it; a
            # known key is answered before the limit is looked at.
            repo = SenderRepository(tx.conn, it.who.tenant_id)
            if await repo.by_key(mb_id, it.row["idempotency_key"]) is not None:
                results.append(KeyExists())
                continue
            verdict = await repo.limit_verdict(mailbox, it.now)
            if verdict.allowed:
                await tx.conn.execute(insert(sends), [row])
                results.append(True)
                continue
            refused = LimitReached(verdict, it.now)
            events.append((it.who, mb_id, SendFailed(
                idempotency_key=it.row["idempotency_key"],
                reason_class="limit_reached",
                detail=refused.message,
                permanent=False,
                retry_at=verdict.frees_at.isoformat() if verdict.frees_at else None,
            )))  # fmt: skip
            results.append(refused)
        if bulk:
            await tx.conn.execute(insert(sends), bulk)
        await append_events(tx, db, events)
        return results

    return write


# --- outcomes -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    record: SendRecord
    token: str
    values: dict[str, Any]
    """state, finished_at, detail, refused (JSON), reason_class, next_attempt_at, copy_state,
    copy_next_at and drop_raw: every key, always (one UPDATE for the whole batch)."""
    event: Event


_FIELDS = ("state", "finished_at", "detail", "refused", "reason_class", "next_attempt_at",
           "copy_state", "copy_next_at")  # fmt: skip
_UPDATE = (
    update(sends)
    .where(sends.c.send_id == bindparam("b_send_id"), sends.c.claim_token == bindparam("b_token"))
    .values(
        claim_token=None,
        claimed_until=None,
        raw=case((bindparam("b_drop_raw", type_=Boolean), null()), else_=sends.c.raw),
        **{f: bindparam(f"b_{f}", type_=sends.c[f].type) for f in _FIELDS},
    )
)


def outcome_writer(db: Database) -> Callable[[Tx, list[Outcome]], Awaitable[list[Any]]]:
    async def write(tx: Tx, items: list[Outcome]) -> list[Any]:
        held = items
        if db.dialect == "postgresql":
            # Another replica may take over an expired claim: lock the rows, read the tokens.
            await _mailboxes(tx, {(o.record.tenant_id, o.record.mailbox_id) for o in items})
            ids = [o.record.send_id for o in items]
            q = select(sends.c.send_id, sends.c.claim_token).where(sends.c.send_id.in_(ids))
            rows = (await tx.conn.execute(q.with_for_update())).all()
            tokens: dict[str, str | None] = {row[0]: row[1] for row in rows}
            held = [o for o in items if tokens.get(o.record.send_id) == o.token]
        if held:
            params = [
                {"b_send_id": o.record.send_id, "b_token": o.token,
                 **{f"b_{k}": v for k, v in o.values.items()}}
                for o in held
            ]  # fmt: skip
            done = await tx.conn.execute(_UPDATE, params)
            if db.dialect != "postgresql" and done.rowcount != len(held):
                # SQLite counts the rows of an executemany: someone's claim was lost.
                if len(held) > 1:
                    raise _Split
                return [False]
            who = [
                (Requester(o.record.tenant_id, o.record.actor, o.record.correlation_id),
                 o.record.mailbox_id, o.event)
                for o in held
            ]  # fmt: skip
            await append_events(tx, db, who)
        return [o in held for o in items]

    return write
