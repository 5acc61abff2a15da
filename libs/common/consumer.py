"""Durable JetStream consumers that apply events to a projection exactly once.

A :class:`Projection` is applied by a durable pull consumer (:mod:`libs.common.pull`) in
batches: the new events of a batch and their inbox (tracking) rows commit in one transaction,
and only then are the messages acknowledged. A redelivered or duplicated event finds its inbox
row and changes nothing.

Failures: if a batch fails, its messages are applied one by one so that one poison event cannot
hold back the others. A failing message is negatively acknowledged with a growing delay and, at
``max_deliver`` deliveries, published to the dead-letter stream with its reason, then acked.
Garbage (not an envelope, unknown type, subject and envelope disagree) is dead-lettered at once:
retrying cannot make it valid. Acks are explicit and sent only after the commit (faststream's
default policy would terminate a failing message, which is then never retried).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.base import CATALOGUE, Catalogue, EventDecodeError, UnknownEventType
from libs.common.events.envelope import Envelope
from libs.common.natsfast import ack_all
from libs.common.pull import PullLoop
from libs.common.store.database import Database
from libs.common.store.fastinsert import insert_rows
from libs.common.store.keys import plan_each_time, select_by_keys
from libs.common.subjects import STREAM, dlq_subject
from libs.common.telemetry import processing

log = logging.getLogger("mailroom.consumer")

Apply = Callable[[AsyncConnection, Sequence[Envelope]], Awaitable[None]]


@dataclass
class Projection:
    """What a consumer applies: ``apply(conn, events)`` inside the consumer's transaction."""

    durable: str
    filter_subject: str
    apply: Apply
    catalogue: Catalogue = CATALOGUE
    reset: Callable[[AsyncConnection], Awaitable[None]] | None = None


@dataclass
class ConsumerStats:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retried: int = 0
    batches: int = 0
    last_applied_at: datetime | None = None
    errors: list[str] = field(default_factory=list)


class BadMessage(Exception):
    """A message that can never be applied (garbage on the bus)."""


_DECODED: OrderedDict[tuple[int, str, str], tuple[dict[str, str], bytes, Envelope]] = OrderedDict()
_DECODED_MAX = 8192


def decode_message(msg: Any, catalogue: Catalogue) -> Envelope:
    """The message's envelope, checked; BadMessage for anything that is not a valid event.

    Several consumers of one process (the embedded stack runs every service's) receive the same
    event: the first decodes it, the others reuse that envelope if their message is the same
    (same subject, headers and data, compared in full). Envelopes are not modified by consumers.
    """
    headers = msg.headers or {}
    key = (id(catalogue), msg.subject, headers.get("ce-id", ""))
    hit = _DECODED.get(key)
    if hit is not None and hit[0] == headers and hit[1] == msg.data:
        return hit[2]
    env = _decode(msg, catalogue)
    if len(_DECODED) >= _DECODED_MAX:
        # the oldest; O(1), where ``del d[next(iter(d))]`` rescans the freed slots each time
        _DECODED.popitem(last=False)
    _DECODED[key] = (dict(headers), bytes(msg.data), env)
    return env


def _decode(msg: Any, catalogue: Catalogue) -> Envelope:
    try:
        env = Envelope.from_nats(msg.headers, msg.data)
        env.event(catalogue)  # unknown types and mismatching payloads are garbage too
    except (EventDecodeError, UnknownEventType) as exc:
        raise BadMessage(str(exc)) from exc
    except Exception as exc:  # subject tokens etc.
        raise BadMessage(f"{type(exc).__name__}: {exc}") from exc
    try:
        expected = env.nats_subject
    except Exception as exc:
        raise BadMessage(f"envelope cannot name its subject: {exc}") from exc
    if expected != msg.subject:
        raise BadMessage(f"subject {msg.subject} does not match the envelope ({expected})")
    return env


class ProjectionConsumer:
    def __init__(
        self,
        db: Database,
        projection: Projection,
        js: Callable[[], Any],
        *,
        max_deliver: int = 5,
        backoff_s: Sequence[float] = (0.2, 1.0, 5.0, 15.0),
    ) -> None:
        self.db = db
        self.projection = projection
        self._js = js
        self.max_deliver = max_deliver
        self.backoff_s = list(backoff_s)
        self.stats = ConsumerStats()
        self.on_applied: list[Callable[[Sequence[Envelope]], None]] = []
        self._loop: PullLoop | None = None
        self._task: asyncio.Task[None] | None = None

    # --- running ---------------------------------------------------------------------------
    def start(self, js: Any, *, batch_size: int = 256) -> None:
        """Consume with a durable pull consumer until :meth:`stop`."""
        self._loop = PullLoop(
            js,
            stream=STREAM,
            durable=self.projection.durable,
            filter_subject=self.projection.filter_subject,
            handle=self._handle_safely,
            batch=batch_size,
        )
        self._task = asyncio.create_task(self._loop.run(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        if self._task is None:
            return
        assert self._loop is not None
        self._loop.stop()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._loop.close()
        self._task = None

    async def _handle_safely(self, msgs: list[Any]) -> None:
        try:
            await self.handle_batch(msgs)
        except Exception as exc:  # e.g. the dead-letter stream is unreachable: retry soon
            log.warning("%s: batch failed (%s); redelivering", self.name, exc)
            for m in msgs:
                if not m._ackd:
                    await m.nak(delay=self.backoff_s[0])

    # --- processing -----------------------------------------------------------------------
    async def handle_batch(self, msgs: list[Any]) -> None:
        self.stats.batches += 1
        log.debug("%s: batch of %d", self.name, len(msgs))
        good: list[tuple[Any, Envelope]] = []
        for msg in msgs:
            try:
                good.append((msg, decode_message(msg, self.projection.catalogue)))
            except BadMessage as exc:
                await self.dead_letter(msg, f"bad message: {exc}")
        if not good:
            return
        # Decoding a batch is a long stretch of pure CPU: let the relay and the other consumers
        # of this process take their turn before the (inline) transaction (bench/pipeline.py).
        await asyncio.sleep(0)
        try:
            await self._apply([env for _, env in good])
        except Exception:
            log.info("%s: batch of %d failed; applying one by one", self.name, len(good))
            for msg, env in good:
                await self._apply_one(msg, env)
            return
        await ack_all([msg for msg, _ in good])

    @property
    def name(self) -> str:
        return self.projection.durable

    async def _apply_one(self, msg: Any, env: Envelope) -> None:
        try:
            await self._apply([env])
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.stats.errors = [*self.stats.errors[-9:], reason]
            delivered = int(msg.metadata.num_delivered or 1)
            if delivered >= self.max_deliver:
                await self.dead_letter(msg, reason, delivered)
                return
            delay = self.backoff_s[min(delivered - 1, len(self.backoff_s) - 1)]
            self.stats.retried += 1
            log.warning(
                "%s: event %s failed (%s); retry in %.1fs", self.name, env.id, reason, delay
            )
            await msg.nak(delay=delay)
            return
        await msg.ack()

    async def _apply(self, events: list[Envelope]) -> None:
        with processing(self.name, events):  # consumer spans, log context (telemetry)
            await self._apply_traced(events)

    async def _apply_traced(self, events: list[Envelope]) -> None:
        inbox = self.db.tables.inbox
        async with self.db.write() as conn:
            seen = await self._applied_already(conn, [e.id for e in events])
            fresh: list[Envelope] = []
            for e in events:  # also drops a duplicate inside the same batch
                if e.id not in seen:
                    seen.add(e.id)
                    fresh.append(e)
            if fresh:
                await self.projection.apply(conn, fresh)
                now = datetime.now(UTC)
                await insert_rows(
                    conn,
                    inbox,
                    [{"consumer": self.name, "event_id": e.id, "applied_at": now} for e in fresh],
                )
        self.stats.applied += len(fresh)
        self.stats.duplicates += len(events) - len(fresh)
        if fresh:
            self.stats.last_applied_at = datetime.now(UTC)
            for callback in self.on_applied:
                callback(fresh)

    async def _applied_already(self, conn: AsyncConnection, ids: list[str]) -> set[str]:
        """Which of ``ids`` this consumer has applied (its inbox rows)."""
        inbox = self.db.tables.inbox
        # one index probe per id on PostgreSQL, whatever the planner knows (store/keys.py)
        await plan_each_time(conn)
        q = select_by_keys(
            inbox, inbox.c.event_id, ids, inbox.c.consumer == self.name, dialect=conn.dialect.name
        )
        rows = await conn.execute(q.with_only_columns(q.selected_columns.event_id))
        return set(rows.scalars())

    async def dead_letter(self, msg: Any, reason: str, delivered: int | None = None) -> None:
        headers = dict(msg.headers or {})
        headers.update(
            {
                "Mailroom-Dlq-Reason": reason[:1000],
                "Mailroom-Dlq-Subject": msg.subject,
                "Mailroom-Dlq-Consumer": self.name,
                "Mailroom-Dlq-Deliveries": str(delivered or msg.metadata.num_delivered or 1),
                "Mailroom-Dlq-Stream-Seq": str(msg.metadata.sequence.stream),
            }
        )
        msg_id = headers.get("Nats-Msg-Id")
        # A dead letter is unique per consumer and stream position.
        headers["Nats-Msg-Id"] = f"{self.name}:{msg.metadata.sequence.stream}:{msg_id}"
        await self._js().publish(dlq_subject(self.name), msg.data, headers=headers)
        self.stats.dead_lettered += 1
        log.error("%s: dead-lettered %s: %s", self.name, msg.subject, reason)
        await msg.ack()
