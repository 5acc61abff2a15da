"""The outbox relay: publishes committed events to JetStream, in commit order, exactly once.

Rows are read in outbox order and published as one JetStream *atomic batch* (one write and one
fsync for up to 1,000 events, all stored or none) with ``Nats-Msg-Id`` = event id, so JetStream
drops a re-publish inside its duplicate window and consumers drop any other by their inbox. If a
batch was stored but its acknowledgement lost, the retry is refused as a whole for its duplicate
ids; the relay then publishes that batch message by message (pipelined), where each duplicate is
dropped on its own. There, only the acknowledged prefix is deleted: the relay retries from the
first unacknowledged row, so the stream never gets a later event of an aggregate before an
earlier one. While NATS is down, events wait in the outbox.

Each row holds the NATS header block its event is published with, encoded once at commit
(``Envelope.header_block``); the relay appends the batch headers and, while tracing, re-encodes
with the publish span's ``traceparent``. Rows written as JSON headers (before 2026-11-22) are read
too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select

from libs.common.natsfast import (
    BLOCK_START,
    header_block,
    headers_of_block,
    publish_with_header_block,
    with_headers,
)
from libs.common.store.database import Database
from libs.common.telemetry import Publishing

log = logging.getLogger("mailroom.outbox")

# JetStream errors for which the batch is published again message by message:
# 10201 a message id of the batch is a duplicate (an earlier attempt was stored),
# 10174/10199/10200 atomic publish disabled / batch incomplete / too large.
_BATCH_REFUSED = {10201, 10174, 10199, 10200}


def row_headers(text: str) -> dict[str, str]:
    """An outbox row's headers: a NATS header block (what the event store writes), or the JSON
    object rows written before 2026-11-22 hold."""
    if text.startswith(BLOCK_START):
        return headers_of_block(text.encode())
    headers: dict[str, str] = json.loads(text)
    return headers


def _row_block(row: Any, obs: Publishing, extra: dict[str, str]) -> bytes:
    """The header block to publish a row with, plus ``extra`` headers. The stored block is
    used as it is unless tracing adds a ``traceparent`` (or the row is an old JSON one)."""
    if not obs.tracing and row.headers.startswith(BLOCK_START):
        return with_headers(row.headers.encode(), extra)
    headers = obs.headers(row)
    headers.update(extra)
    return header_block(headers)


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        js: Any,
        *,
        batch: int = 512,
        poll_interval: float = 1.0,
        ack_timeout: float = 5.0,
        atomic_min: int = 32,
    ) -> None:
        self.db = db
        self.js = js
        self.batch = min(batch, 1000)  # JetStream atomic batches hold at most 1,000
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
        # An atomic batch costs the server a fixed ~4 ms (nats-server 2.15, measured): a few
        # rows go out pipelined one by one instead (~0.5 ms each), many rows as one batch.
        self.atomic_min = atomic_min
        self._wake = asyncio.Event()
        self._stopping = False
        self.published = 0
        db.on_commit(self.notify)

    def notify(self) -> None:
        self._wake.set()

    async def depth(self) -> int:
        async with self.db.read() as conn:
            q = select(func.count()).select_from(self.db.tables.outbox)
            return int((await conn.execute(q)).scalar() or 0)

    async def run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                while await self.drain_once():
                    pass
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down, timeouts: wait and retry, nothing is lost
                log.warning("outbox relay: %s; retrying in %.2fs", type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _publish_atomic(self, rows: Sequence[Any], obs: Publishing) -> bool:
        """Publish rows as one atomic batch; False if the stream refused it (duplicates)."""
        nc = self.js._nc
        batch_id = uuid.uuid4().hex
        last = len(rows)
        for i, row in enumerate(rows, 1):
            extra = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
            if i < last:
                block = _row_block(row, obs, extra)
                await publish_with_header_block(nc, row.subject, row.body, block)
                continue
            headers = obs.headers(row)
            headers.update(extra)
            headers["Nats-Batch-Commit"] = "1"
            reply = await nc.request(
                row.subject, row.body, headers=headers, timeout=self.ack_timeout
            )
            answer = json.loads(reply.data)
            error = answer.get("error")
            if error is None:
                return True
            if error.get("err_code") in _BATCH_REFUSED:
                log.info(
                    "outbox relay: atomic batch refused (%s); publishing one by one",
                    error.get("description"),
                )
                return False
            raise RuntimeError(f"JetStream refused the batch: {error.get('description')}")
        return False

    async def _delete(self, seqs: list[int]) -> None:
        """Delete exactly the rows that were published. Never a range: on PostgreSQL a row with
        a lower seq may commit after the batch was read (seq is taken at insert, visibility
        comes at commit), and a range delete would drop it unpublished."""
        ob = self.db.tables.outbox
        async with self.db.write() as conn:
            await conn.execute(delete(ob).where(ob.c.seq.in_(seqs)))

    async def drain_once(self) -> int:
        """Publish one batch; return how many rows were published (0 when the outbox is empty)."""
        self._wake.clear()
        ob = self.db.tables.outbox
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(ob.c.seq, ob.c.subject, ob.c.headers, ob.c.body)
                    .order_by(ob.c.seq)
                    .limit(self.batch)
                )
            ).all()
        if not rows:
            return 0
        if len(rows) >= self.atomic_min:
            obs = Publishing(rows, row_headers)  # spans and counts (libs.common.telemetry)
            try:
                stored = await self._publish_atomic(rows, obs)
            except BaseException as exc:
                obs.done(0, exc)
                raise
            if stored:
                obs.done(len(rows))
                await self._delete([r.seq for r in rows])
                self.published += len(rows)
                return len(rows)
            obs.done(0, RuntimeError("atomic batch refused"))
        obs = Publishing(rows, row_headers)
        futures = []
        error: BaseException | None = None
        for row in rows:
            try:
                fut = await self.js.publish_async(row.subject, row.body, headers=obs.headers(row))
            except Exception as exc:
                error = exc
                break
            futures.append(fut)
        done_upto: int | None = None
        for row, fut in zip(rows, futures, strict=False):
            try:
                await asyncio.wait_for(fut, self.ack_timeout)
            except Exception as exc:
                error = error or exc
                break
            done_upto = row.seq
        for fut in futures:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: the first failure above is the one reported
        published = 0 if done_upto is None else sum(1 for r in rows if r.seq <= done_upto)
        obs.done(published, error)
        if done_upto is not None:
            await self._delete([r.seq for r in rows if r.seq <= done_upto])
        self.published += published
        if error is not None:
            raise error
        return published
