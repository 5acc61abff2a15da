"""The responder: hands queued autoreplies to the normal send path, on every replica.

A queued reply (``sender_autoreply_pending``, written by the mail consumer with its decision)
is claimed with a conditional update, submitted like any send (``SenderHandlers.submit``:
the daily limit, the Idempotency-Key, the durable queue, MessageSent / SendFailed) with the
RFC 3834 header fields, and then removed. If the replica dies in between, the claim runs out
and another one submits it again with the same key: the send path answers the recorded send
and delivers nothing twice. A refusal (over the limit, a disabled or deleted mailbox) ends the
reply: an autoreply is not worth retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from libs.common.errors import MailroomError
from libs.common.store.database import Database
from services.sender import autoreply
from services.sender.autoreply_handlers import ACTOR
from services.sender.autoreply_repository import PendingReplies, PendingReply
from services.sender.handlers import SenderHandlers
from services.sender.models import MessageIn
from services.sender.ports import Requester

log = logging.getLogger("mailroom.sender.autoreply")
CLAIM_S = 60.0
BATCH = 32
MAX_ATTEMPTS = 10
PURGE_EVERY_S = 3600.0


class Responder:
    def __init__(self, db: Database, handlers: SenderHandlers, poll_s: float) -> None:
        self.db = db
        self.handlers = handlers
        self.poll_s = max(poll_s, 0.05)
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.submitted = 0

    def wake(self) -> None:
        self._event.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sender-autoresponder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        purged = loop.time()
        while True:
            try:
                while await self.tick() == BATCH:
                    pass
                if loop.time() - purged > PURGE_EVERY_S:
                    purged = loop.time()
                    async with self.db.write() as conn:
                        await PendingReplies(conn).forget_old_replies(
                            datetime.now(UTC) - timedelta(days=autoreply.MAX_INTERVAL_DAYS + 1)
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is briefly away: next round
                log.warning("autoresponder: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), self.poll_s)
            self._event.clear()

    async def tick(self) -> int:
        """Submit what is due; return how many were looked at."""
        now = datetime.now(UTC)
        async with self.db.read() as conn:
            due = await PendingReplies(conn).due(now, BATCH)
        for p in due:
            async with self.db.write() as conn:
                mine = await PendingReplies(conn).claim(p, now, now + timedelta(seconds=CLAIM_S))
            if mine:
                await self._submit(p)
        return len(due)

    async def _submit(self, p: PendingReply) -> None:
        who = Requester(p.tenant_id, ACTOR, p.correlation_id, automatic=True)
        try:
            msg = MessageIn.model_validate_json(p.message)
            result = await self.handlers.submit(
                who,
                p.mailbox_id,
                p.idempotency_key,
                msg,
                wait=False,
                extra_headers=autoreply.REPLY_HEADERS,
            )
            self.submitted += not result.replayed
        except (MailroomError, ValueError) as exc:  # refused for good: no reply
            log.info("mailbox %s: autoreply not sent: %s", p.mailbox_id, exc)
        except Exception as exc:
            log.warning("mailbox %s: autoreply submit failed: %s", p.mailbox_id, exc)
            if p.attempts + 1 < MAX_ATTEMPTS:
                at = datetime.now(UTC) + timedelta(seconds=min(300.0, 2.0 ** (p.attempts + 1)))
                async with self.db.write() as conn:
                    await PendingReplies(conn).later(p, at)
                return
        async with self.db.write() as conn:
            await PendingReplies(conn).done(p)
