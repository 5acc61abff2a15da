"""What a service is made of, and the runtime it is started in.

Each service's ``app.create_app(settings)`` returns a :class:`Service`: its database, HTTP
routers, faststream router (event consumers and request-reply handlers) and whether it writes
events (then an outbox relay runs for it). A host (``libs.common.host``) runs one or many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from faststream.nats import NatsRouter
from sqlalchemy import text

from libs.common import migrations
from libs.common.auth import Principal, TokenIssuer, TokenVerifier, bearer
from libs.common.consumer import Projection, ProjectionConsumer
from libs.common.outbox import OutboxRelay
from libs.common.settings import Settings
from libs.common.store.database import Database
from libs.common.telemetry import bind_principal

log = logging.getLogger("mailroom.service")


@dataclass
class Runtime:
    settings: Settings
    verifier: TokenVerifier
    issuer: TokenIssuer | None = None
    nc: Any = None
    js: Any = None


async def current_principal(request: Request) -> Principal:
    """The caller (async: a sync dependency would cost every request a thread hop)."""
    runtime: Runtime = request.app.state.runtime
    principal = await runtime.verifier.verify_async(bearer(request))
    bind_principal(principal.tenant_id, principal.actor)  # the span and the logs say who
    return principal


Caller = Annotated[Principal, Depends(current_principal)]

Hook = Callable[["Service", Runtime], Awaitable[None]]


@dataclass
class Service:
    name: str
    db: Database
    settings: Settings
    routers: list[APIRouter] = field(default_factory=list)
    nats: NatsRouter = field(default_factory=NatsRouter)
    projections: list[Projection] = field(default_factory=list)
    writes_events: bool = True
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    schema_setup: list[str] = field(default_factory=list)
    metrics_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Called before each /metrics scrape to refresh this service's own gauges."""
    consumers: list[ProjectionConsumer] = field(default_factory=list)
    relay: OutboxRelay | None = None
    runtime: Runtime | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def wire_consumers(self, js: Callable[[], Any]) -> None:
        """One durable consumer per projection (started by :meth:`start_consumers`)."""
        for p in self.projections:
            c = ProjectionConsumer(
                self.db,
                p,
                js,
                max_deliver=self.settings.consumer_max_deliver,
                backoff_s=self.settings.consumer_backoff_s,
            )
            self.consumers.append(c)

    def start_consumers(self, js: Any) -> None:
        for c in self.consumers:
            c.start(js, batch_size=self.settings.consumer_batch)

    async def migrate(self) -> None:
        """Bring the schema up to date (Alembic, ``services/<name>/migrations``; services
        without migrations yet: create what is missing), with its database-level guards."""
        if migrations.has_migrations(self.name):
            await migrations.upgrade(self.db.engine, self.name, self.db.metadata)
        else:
            await self.db.create_all()
        if self.schema_setup:
            async with self.db.write() as conn:
                for stmt in self.schema_setup:
                    await conn.exec_driver_sql(stmt)

    async def start(self, runtime: Runtime) -> None:
        self.runtime = runtime
        await self.migrate()
        if self.writes_events:
            self.relay = OutboxRelay(self.db, runtime.js, batch=self.settings.relay_batch)
            self._tasks.append(asyncio.create_task(self.relay.run(), name=f"{self.name}-relay"))
        for hook in self.on_start:
            await hook(self, runtime)

    async def stop(self) -> None:
        for hook in self.on_stop:
            with contextlib.suppress(Exception):
                await hook(self, self.runtime)  # type: ignore[arg-type]
        for c in self.consumers:
            await c.stop()
        if self.relay:
            self.relay.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.db.dispose()

    async def ready(self) -> bool:
        try:
            async with self.db.read() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True
