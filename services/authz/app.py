"""The authz service: grants on mailboxes, and checks answered from an in-memory index.

HTTP: ``/v1/mailboxes/{id}/grants``, ``/v1/mailboxes/{id}/access``,
``/v1/employees/{id}/access``, ``/v1/check``. NATS request-reply: ``mailroom-rpc.authz.check``
(``services.authz.rpc``; contract in ``libs.common.authz_client``). Consumes registry events
(``mailroom.*.registry.>``, ``services.authz.projection``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from libs.common.service import Runtime, Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from services.authz import tables
from services.authz.api import build_router
from services.authz.config import AuthzSettings
from services.authz.handlers import AuthzHandlers
from services.authz.index import AuthzIndex
from services.authz.projection import AuthzProjector, registry_projection
from services.authz.rpc import CheckResponder

log = logging.getLogger("mailroom.authz")


@dataclass
class AuthzService(Service):
    index: AuthzIndex | None = None
    handlers: AuthzHandlers | None = None
    config: AuthzSettings = field(default_factory=AuthzSettings)
    _own: list[asyncio.Task[Any]] = field(default_factory=list)


def _every(interval_s: float, job: Callable[[], Awaitable[Any]], what: str) -> Any:
    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception as exc:  # the next round tries again; checks never depend on it
                log.warning("authz %s failed: %s", what, exc)

    return loop()


def create_app(settings: Settings, config: AuthzSettings | None = None) -> AuthzService:
    config = config or AuthzSettings()
    db = Database(settings.database_url_for("authz"), tables.metadata, projector=AuthzProjector())
    index = AuthzIndex(db)
    handlers = AuthzHandlers(db, index)
    svc = AuthzService(
        name="authz",
        db=db,
        settings=settings,
        routers=[build_router(handlers, index)],
        index=index,
        handlers=handlers,
        config=config,
    )

    def poke() -> None:
        """After a consumed batch (its commit follows): update the index, publish revocations."""
        index.poke()
        if svc.relay is not None:
            asyncio.get_running_loop().call_later(0.05, svc.relay.notify)

    svc.projections = [registry_projection(db.store, poke)]
    responder = CheckResponder(index)

    async def prune() -> None:
        await handlers.prune_changes(svc.config.change_retention_s)

    async def start(_: Service, runtime: Runtime) -> None:
        await index.load()
        index.start()
        await responder.start(runtime.nc)
        sweep = _every(svc.config.sweep_s, handlers.sweep_expired, "expiry sweep")
        svc._own.append(asyncio.create_task(sweep, name="authz-sweep"))
        pruner = _every(svc.config.prune_interval_s, prune, "change-log pruning")
        svc._own.append(asyncio.create_task(pruner, name="authz-prune"))
        runtime.verifier.revoked.append(index.is_offboarded)

    async def stop(_: Service, runtime: Runtime) -> None:
        with contextlib.suppress(ValueError):
            runtime.verifier.revoked.remove(index.is_offboarded)
        await responder.stop()
        await index.stop()
        for task in svc._own:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        svc._own.clear()

    svc.on_start.append(start)
    svc.on_stop.append(stop)
    return svc
