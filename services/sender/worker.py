"""The dispatcher: works the durable send queue (``sender_sends``) on every replica.

It claims due sends (queued retries, and claims whose holder went silent for ``claim_s``) with
a conditional update, so exactly one replica delivers each attempt, and runs them with bounded
concurrency. It also files Sent copies, forgets sends older than ``keep_s`` and closes idle
pooled SMTP sessions (``smtp_pool.py``; all of them when it stops). It polls every
``poll_s`` and is woken at once when this replica queues work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.common.ids import new_id
from libs.common.store.database import Database
from services.sender import imap, mime
from services.sender.handlers import SenderHandlers
from services.sender.repository import Queue, SenderRepository
from services.sender.settings import SenderSettings

log = logging.getLogger("mailroom.sender.worker")
PURGE_EVERY_S = 600.0


class Dispatcher:
    def __init__(self, db: Database, handlers: SenderHandlers, config: SenderSettings) -> None:
        self.db = db
        self.handlers = handlers
        self.config = config
        self._event = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_purge = 0.0
        handlers.wake.append(self.wake)

    def wake(self) -> None:
        self._event.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sender-dispatcher")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._running.clear()
        self._task = None
        await self.handlers.smtp_pool.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is briefly away: try again next round
                log.warning("sender dispatcher: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), self.config.poll_s)
            self._event.clear()

    async def tick(self) -> int:
        """Claim and start what is due now; return how many attempts were started."""
        now = datetime.now(UTC)
        free = self.config.concurrency - len(self._running)
        started = 0
        if free > 0:
            started += await self._claim_sends(now, free)
            started += await self._claim_copies(now, max(0, free - started))
        self.handlers.smtp_pool.sweep()  # idle SMTP sessions past their time
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_purge > PURGE_EVERY_S:
            self._last_purge = loop.time()
            async with self.db.write() as conn:
                await Queue(conn).purge(now - timedelta(seconds=self.config.keep_s))
        return started

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._running.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._running.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("sender dispatcher task failed: %r", t.exception())
            self.wake()  # a slot is free

        task.add_done_callback(done)

    async def _claim_sends(self, now: datetime, limit: int) -> int:
        async with self.db.read() as conn:
            due = await Queue(conn).due(now, limit)
        if not due:
            return 0
        until = now + timedelta(seconds=self.config.claim_s)
        claimed: list[tuple[str, str]] = []
        async with self.db.write() as conn:
            q = Queue(conn)
            for send_id in due:
                token = new_id()
                if await q.claim(send_id, now, token, until):
                    claimed.append((send_id, token))
        for send_id, token in claimed:
            self._spawn(self._attempt(send_id, token))
        return len(claimed)

    async def _attempt(self, send_id: str, token: str) -> None:
        async with self.db.read() as conn:
            found = await Queue(conn).claimed(send_id)
        if found is None or found[0].claim_token != token:
            return
        await self.handlers.attempt(found[0], found[1], token)

    # --- Sent copies ----------------------------------------------------------------------
    async def _claim_copies(self, now: datetime, limit: int) -> int:
        if limit <= 0:
            return 0
        async with self.db.read() as conn:
            due = await Queue(conn).due_copies(now, limit)
        if not due:
            return 0
        until = now + timedelta(seconds=self.config.imap_timeout_s * 4 + 60)
        claimed: list[tuple[str, str]] = []
        async with self.db.write() as conn:
            for send_id in due:
                token = new_id()
                if await Queue(conn).claim_copy(send_id, now, token, until):
                    claimed.append((send_id, token))
        for send_id, token in claimed:
            self._spawn(self._copy(send_id, token))
        return len(claimed)

    async def _copy(self, send_id: str, token: str) -> None:
        async with self.db.read() as conn:
            found = await Queue(conn).claimed(send_id)
        if found is None:
            return
        record, raw = found
        async with self.db.read() as conn:
            mailbox = await SenderRepository(conn, record.tenant_id).mailbox(record.mailbox_id)
        values: dict[str, Any]
        try:
            if mailbox is None or mailbox.imap is None:
                raise imap.CopyFailed("the account has no IMAP server any more")
            cred = await self.handlers.wiring.credentials.get(
                record.tenant_id, record.mailbox_id, "imap sent copy"
            )
            if cred is None:
                raise imap.CopyFailed("no credential for IMAP")
            folder = await imap.append_sent(
                mailbox.imap,
                cred,
                mime.sent_copy(raw, record.bcc),
                record.message_id,
                tls_context=self.config.tls_context,
                timeout=self.config.imap_timeout_s,
                retrying=record.copy_attempts > 1,
            )
            values = {"copy_state": "saved", "copy_detail": f"saved in {folder}"}
        except Exception as exc:  # includes DeliveryFailed from the credential source
            detail = f"{type(exc).__name__}: {exc}"[:1000]
            if record.copy_attempts >= self.config.copy_max_attempts:
                values = {"copy_state": "failed", "copy_detail": detail}
            else:
                delay = self.config.backoff(record.copy_attempts)
                values = {
                    "copy_state": "pending",
                    "copy_detail": detail,
                    "copy_next_at": datetime.now(UTC) + timedelta(seconds=delay),
                }
            log.warning("send %s: Sent copy failed: %s", send_id, detail)
        async with self.db.write() as conn:
            await Queue(conn).finish_copy(send_id, token, values)
