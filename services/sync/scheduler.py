"""The engine of one sync worker: a watcher per account, and the limits they share.

* ``max_concurrent_polls`` polls at once (a semaphore);
* ``per_host_logins`` logins at once per server host (many providers throttle or ban bursts);
* ``max_connections`` connections kept open between polls — accounts past it log in per poll;
* ``idle_connections`` of them idling on INBOX.

Registry changes reach it after the projection committed them (``on_registry``): new or
reactivated accounts are watched at once, disabled and deleted ones stop, changed settings
reconnect, a rotated credential retries at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from libs.common.events.envelope import Envelope
from libs.common.store.database import Database
from services.sync.domain import BackoffPolicy
from services.sync.ports import CredentialSource, StaticCredentials
from services.sync.repository import SyncRepository, watchable_accounts
from services.sync.settings import SyncSettings
from services.sync.watcher import AccountWatcher

log = logging.getLogger("mailroom.sync")


@dataclass
class EngineStats:
    polls: int = 0
    poll_seconds: float = 0.0
    logins: int = 0
    failures: int = 0
    received: int = 0


class SyncEngine:
    def __init__(
        self, db: Database, settings: SyncSettings, credentials: CredentialSource | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.credentials: CredentialSource = credentials or StaticCredentials()
        self.policy = BackoffPolicy(
            base_s=settings.backoff_base_s,
            max_s=settings.backoff_max_s,
            auth_s=settings.auth_backoff_s,
            auth_max_s=settings.auth_backoff_max_s,
            tls_s=settings.tls_backoff_s,
            tls_max_s=settings.tls_backoff_max_s,
        )
        self.ssl_context = settings.ssl_context()
        self.poll_slots = asyncio.Semaphore(settings.max_concurrent_polls)
        self.executor = ThreadPoolExecutor(settings.pop3_threads, thread_name_prefix="sync-pop3")
        self.stats = EngineStats()
        self.watchers: dict[tuple[str, str], AccountWatcher] = {}
        self.open_connections = 0
        self.idling = 0
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.running = False

    # --- shared limits ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def host_slot(self, host: str) -> AsyncIterator[None]:
        sem = self._hosts.get(host.lower())
        if sem is None:
            sem = self._hosts[host.lower()] = asyncio.Semaphore(self.settings.per_host_logins)
        async with sem:
            yield

    def take_connection(self) -> bool:
        if self.open_connections >= self.settings.max_connections:
            return False
        self.open_connections += 1
        return True

    def release_connection(self) -> None:
        self.open_connections -= 1

    def take_idle(self) -> bool:
        if self.idling >= self.settings.idle_connections:
            return False
        self.idling += 1
        return True

    def release_idle(self) -> None:
        self.idling -= 1

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.running = True
        async with self.db.read() as conn:
            accounts = await watchable_accounts(conn)
        spread = min(self.settings.startup_spread_s, self.settings.default_interval_s)
        async with self._lock:
            for a in accounts:
                if a.key not in self.watchers:
                    w = AccountWatcher(self, a)
                    self.watchers[a.key] = w
                    w.start(random.random() * spread if spread > 0 else 0.0)
        log.info("sync: watching %d account(s)", len(self.watchers))

    async def stop(self) -> None:
        self.running = False
        for t in list(self._tasks):
            t.cancel()
        async with self._lock:
            watchers, self.watchers = list(self.watchers.values()), {}
        await asyncio.gather(*(w.stop() for w in watchers), return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # --- registry changes -------------------------------------------------------------------
    def registry_applied(self, envelopes: Sequence[Envelope]) -> None:
        """Consumer callback after a committed batch: act on it (in order, in the background)."""
        if not self.running:
            return
        task = asyncio.get_running_loop().create_task(self.on_registry(list(envelopes)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def on_registry(self, envelopes: list[Envelope]) -> None:
        async with self._lock:
            for env in envelopes:
                if env.aggregate != "account" or not self.running:
                    continue
                await self._sync_watcher(env.tenant_id, env.aggregate_id, env.event_name)

    async def _sync_watcher(self, tenant_id: str, account_id: str, event_name: str) -> None:
        key = (tenant_id, account_id)
        async with self.db.read() as conn:
            account = await SyncRepository(conn, tenant_id).account(account_id)
        w = self.watchers.get(key)
        if account is None or not account.watchable:
            if w is not None:
                del self.watchers[key]
                await w.stop()
            return
        if w is None:
            w = AccountWatcher(self, account)
            self.watchers[key] = w
            w.start(0.0)
            return
        w.update(account)
        if event_name == "CredentialRotated":
            w.credential_rotated()
        elif event_name == "AccountReactivated":
            w.poke()

    def force(self, tenant_id: str, account_id: str) -> bool:
        """Sync this account now; False if it is not being watched."""
        w = self.watchers.get((tenant_id, account_id))
        if w is None:
            return False
        w.poke()
        return True
