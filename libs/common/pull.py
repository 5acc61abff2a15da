"""A JetStream pull loop that keeps pull requests open and hands messages over in batches.

Why not ``fetch()`` in a loop (faststream's batch subscriber does that): a fetch with a large
batch waits for its whole timeout when fewer messages are pending (latency), and a request that
outlives its fetch delivers to nobody until ack_wait runs out — under load we saw events stall
for a full minute. Here pull requests stay open on the server (``expires`` with idle heartbeats),
a new one is sent whenever fewer than half a batch remains requested, and messages are read from
the subscription queue as they arrive: the first message of a batch is handed over at once,
with whatever else is already queued (up to the batch size).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

log = logging.getLogger("mailroom.pull")

EXPIRES_S = 10.0
HEARTBEAT_S = 2.0


class PullLoop:
    def __init__(
        self,
        js: Any,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        handle: Callable[[list[Any]], Awaitable[None]],
        batch: int = 256,
        ack_wait_s: float = 60.0,
        max_ack_pending: int = 20_000,
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self.handle = handle
        self.batch = batch
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self._requested = 0
        self._stopping = False
        self._sub: Any = None

    async def _subscribe(self) -> None:
        config = ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,  # retries and dead letters are decided by the consumer helper
            max_ack_pending=self.max_ack_pending,
            max_waiting=64,
        )
        self._sub = await self.js.pull_subscribe(
            self.filter_subject, durable=self.durable, stream=self.stream, config=config
        )

    async def _request(self) -> None:
        want = self.batch
        body = {
            "batch": want,
            "expires": int(EXPIRES_S * 1e9),
            "idle_heartbeat": int(HEARTBEAT_S * 1e9),
        }
        await self._sub._nc.publish(
            self._sub._nms, json.dumps(body).encode(), reply=self._sub._deliver
        )
        self._requested += want

    async def run(self) -> None:
        await self._subscribe()
        queue: asyncio.Queue[Any] = self._sub._sub._pending_queue
        while not self._stopping:
            try:
                if self._requested <= self.batch // 2:
                    await self._request()
                try:
                    first = await asyncio.wait_for(queue.get(), 3 * HEARTBEAT_S)
                except TimeoutError:
                    self._requested = 0  # no heartbeat either: the requests are gone
                    continue
                msgs = self._take(first)
                while len(msgs) < self.batch and not queue.empty():
                    msgs.extend(self._take(queue.get_nowait()))
                if msgs:
                    await self.handle(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnects, handler bugs: keep consuming
                log.warning("%s: pull loop error: %s", self.durable, exc)
                self._requested = 0
                await asyncio.sleep(0.5)

    def _take(self, msg: Any) -> list[Any]:
        """Account for one queued message; return it unless it is a status message."""
        self._sub._sub._pending_size -= len(msg.data)
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._requested -= 1
            return [msg]
        if status in ("408", "409"):  # a request expired or was closed: what it still owed
            owed = msg.headers.get("Nats-Pending-Messages")
            self._requested -= int(owed) if owed and owed.isdigit() else self.batch
            self._requested = max(self._requested, 0)
        return []

    def stop(self) -> None:
        self._stopping = True

    async def close(self) -> None:
        """Drop the subscription (open pull requests die with it)."""
        if self._sub is not None:
            try:
                await self._sub._sub.unsubscribe()
            except Exception as exc:  # the connection may already be closed
                log.debug("%s: unsubscribe: %s", self.durable, exc)
            self._sub = None
