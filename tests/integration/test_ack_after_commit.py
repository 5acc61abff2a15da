"""A consumer acknowledges a delivery only after the transaction that applied it committed.

The kill -9 tests (tests/chaos/test_nats_crash.py) kill a consuming process at a random moment,
which seldom falls between an acknowledgement and its commit. This test stops the projection
exactly there: while the event is being applied and nothing is committed yet, JetStream must
still count it as unacknowledged, so a crash at that moment leaves it for redelivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Projection
from libs.common.events import Envelope
from libs.common.host import Host
from libs.common.natsserver import NatsServer
from libs.common.service import Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from libs.common.subjects import STREAM
from tests.support.events import employee_events
from tests.support.stack import wait_until

pytestmark = pytest.mark.connected


class Gated:
    """A projection whose apply waits at a gate: the moment between delivery and commit."""

    def __init__(self) -> None:
        self.metadata = MetaData()
        self.table = Table("seen", self.metadata, Column("event_id", String(36), primary_key=True))
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        self.entered.set()
        await self.release.wait()
        await conn.execute(insert(self.table), [{"event_id": e.id} for e in events])


async def test_a_delivery_is_acknowledged_only_after_its_commit(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    settings = Settings(data_dir=tmp_path)
    gated = Gated()
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gated.db'}", gated.metadata)
    projection = Projection("gated", "mailroom.*.registry.>", gated.apply)
    host = Host([Service("gated", db, settings, writes_events=False, projections=[projection])],
                settings, nats_server.url)  # fmt: skip
    await host.start()
    js: Any = host.runtime.js

    async def state() -> tuple[int, int]:
        info = await js.consumer_info(STREAM, "gated")
        async with db.read() as conn:
            rows = (await conn.execute(select(func.count()).select_from(gated.table))).scalar()
        return int(info.num_ack_pending or 0), int(rows or 0)

    try:
        event = employee_events(1)[0]
        await js.publish(event.nats_subject, event.body(), headers=event.to_headers())
        await asyncio.wait_for(gated.entered.wait(), 10)
        await asyncio.sleep(0.3)  # an early acknowledgement would have reached the server
        assert await state() == (1, 0)  # delivered, not committed: still unacknowledged
        gated.release.set()

        async def done() -> bool:
            return await state() == (0, 1)

        await wait_until(done)
    finally:
        gated.release.set()
        await host.stop()
