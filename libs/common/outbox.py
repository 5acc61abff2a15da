"""The outbox relay: publishes committed events to JetStream, in commit order, exactly once.

Rows are read in outbox order and published pipelined (``publish_async``) with ``Nats-Msg-Id``
= event id, so JetStream drops a re-publish inside its duplicate window and consumers drop any
other by their inbox. Only the acknowledged prefix of a batch is deleted: after a failure the
relay retries from the first unacknowledged row, so the stream never gets a later event of an
aggregate before an earlier one. While NATS is down, events wait in the outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sqlalchemy import delete, func, select

from libs.common.store.database import Database

log = logging.getLogger("mailroom.outbox")


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        js: Any,
        *,
        batch: int = 512,
        poll_interval: float = 1.0,
        ack_timeout: float = 5.0,
    ) -> None:
        self.db = db
        self.js = js
        self.batch = batch
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
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
        futures = []
        error: BaseException | None = None
        for row in rows:
            try:
                fut = await self.js.publish_async(
                    row.subject, row.body, headers=json.loads(row.headers)
                )
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
        if done_upto is not None:
            async with self.db.write() as conn:
                await conn.execute(delete(ob).where(ob.c.seq <= done_upto))
        published = 0 if done_upto is None else sum(1 for r in rows if r.seq <= done_upto)
        self.published += published
        if error is not None:
            raise error
        return published
