"""The engine of one sync worker: a watcher per account, and the limits they share.

* ``max_concurrent_polls`` polls at once (a semaphore);
* ``per_host_logins`` logins at once per server host (many providers throttle or ban bursts);
* ``max_connections`` connections kept open between polls — accounts past it log in per poll;
* ``idle_connections`` of them idling on INBOX.

Registry changes reach it after the projection committed them (``on_registry``): new or
reactivated accounts are watched at once, disabled and deleted ones stop, changed settings
reconnect, a rotated credential retries at once.

With several workers (``ownership``, :mod:`services.sync.ownership`) a worker watches only the
accounts it holds the lease of: ``rebalance`` runs every ``lease_renew_s`` and whenever the
view changes (a worker joins or dies, an account is freed), claims free accounts up to its
share and gives away what is above it. The worker whose consumer applied a registry change
tells the others (``mailroom-rpc.sync.changed``, core NATS); a forced sync of an account
another worker holds is passed on (``mailroom-rpc.sync.force``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from libs.common.events.envelope import Envelope
from libs.common.store.database import Database
from libs.common.subjects import rpc_subject
from services.sync.domain import BackoffPolicy
from services.sync.models import Account
from services.sync.ownership import Key, Ownership
from services.sync.ports import CredentialSource, StaticCredentials
from services.sync.repository import SyncRepository, watchable_accounts
from services.sync.settings import SyncSettings
from services.sync.watcher import AccountWatcher

log = logging.getLogger("mailroom.sync")
CHANGED_SUBJECT = rpc_subject("sync", "changed")
FORCE_SUBJECT = rpc_subject("sync", "force")


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
        self._hosts: dict[str, _HostGate] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.running = False
        self.ownership: Ownership | None = None
        self.nc: Any = None
        self._subs: list[Any] = []

    # --- shared limits ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def host_slot(self, host: str) -> AsyncIterator[None]:
        """A login slot on ``host``: ``per_host_logins`` at once in this worker and, with
        ``per_host_logins_total``, this worker's share of that cap (total / live workers)."""
        gate = self._hosts.get(host.lower())
        if gate is None:
            gate = self._hosts[host.lower()] = _HostGate()
        if self.ownership is not None:  # no login while our lease might have run out
            await self.ownership.wait_valid()
        await gate.acquire(self.host_limit)
        try:
            yield
        finally:
            gate.release()  # no await here: a cancelled caller must not lose its session

    def host_limit(self) -> int:
        limit = self.settings.per_host_logins
        total = self.settings.per_host_logins_total
        if total is not None:
            workers = self.ownership.live_workers() if self.ownership is not None else 1
            limit = min(limit, max(1, total // workers))
        return limit

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
        if self.ownership is not None:
            await self.ownership.open()
            await self._listen()
            self._spawn(self._own_loop(), "sync-ownership")
            return
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
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        async with self._lock:
            watchers, self.watchers = list(self.watchers.values()), {}
        await asyncio.gather(*(w.stop() for w in watchers), return_exceptions=True)
        if self.ownership is not None:  # after the watchers stopped: then give the leases back
            with contextlib.suppress(Exception):
                await self.ownership.close(release=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- registry changes -------------------------------------------------------------------
    def registry_applied(self, envelopes: Sequence[Envelope]) -> None:
        """Consumer callback after a committed batch: act on it (in order, in the background)."""
        if not self.running:
            return
        self._spawn(self.on_registry(list(envelopes)), "sync-registry")
        if self.ownership is not None and self.nc is not None:
            items = [
                [e.tenant_id, e.aggregate_id, e.event_name]
                for e in envelopes
                if e.aggregate == "account"
            ]
            if items:
                self._spawn(self._tell(CHANGED_SUBJECT, {"items": items}), "sync-tell")

    async def on_registry(self, envelopes: list[Envelope]) -> None:
        accounts = [e for e in envelopes if e.aggregate == "account"]
        await self.on_changes([(e.tenant_id, e.aggregate_id, e.event_name) for e in accounts])

    async def on_changes(self, changes: Sequence[tuple[str, str, str]]) -> None:
        async with self._lock:
            for tenant_id, account_id, event_name in changes:
                if not self.running:
                    return
                await self._sync_watcher(tenant_id, account_id, event_name)

    async def _sync_watcher(self, tenant_id: str, account_id: str, event_name: str) -> None:
        key = (tenant_id, account_id)
        async with self.db.read() as conn:
            account = await SyncRepository(conn, tenant_id).account(account_id)
        w = self.watchers.get(key)
        if account is None or not account.watchable:
            if w is not None:
                del self.watchers[key]
                await w.stop()
            if self.ownership is not None:
                await self.ownership.release(key)
            return
        if w is None and self.ownership is not None:
            self.ownership.changed.set()  # claimed by whoever has room (``rebalance``)
            return
        if w is None:
            w = AccountWatcher(self, account)
            self.watchers[key] = w
            w.start(0.0)
            return
        w.update(account)
        if event_name == "CredentialRotated":
            w.credential_rotated(account.credential_version)
        elif event_name == "AccountReactivated":
            w.poke()

    def force(self, tenant_id: str, account_id: str) -> bool:
        """Sync this account now; False if no worker is watching it."""
        w = self.watchers.get((tenant_id, account_id))
        if w is not None:
            w.poke()
            return True
        o = self.ownership
        if o is None or self.nc is None or o.owner((tenant_id, account_id)) is None:
            return False
        self._spawn(self._tell(FORCE_SUBJECT, {"key": [tenant_id, account_id]}), "sync-tell")
        return True

    # --- several workers --------------------------------------------------------------------
    @property
    def ownership_id(self) -> str | None:
        return self.ownership.worker_id if self.ownership is not None else None

    async def _tell(self, subject: str, doc: dict[str, Any]) -> None:
        assert self.ownership is not None
        body = json.dumps({**doc, "from": self.ownership.worker_id}).encode()
        try:
            await self.nc.publish(subject, body)
        except Exception as exc:  # the others catch up at their next rebalance
            log.warning("sync: telling the other workers failed: %s", exc)

    async def _listen(self) -> None:
        if self.nc is None:
            return

        async def changed(msg: Any) -> None:
            doc = _notice(msg)
            if doc is not None and doc.get("from") != self.ownership_id:
                items = [(str(t), str(a), str(n)) for t, a, n in _triples(doc.get("items"))]
                self._spawn(self.on_changes(items), "sync-changed")

        async def force(msg: Any) -> None:
            doc = _notice(msg)
            key = doc.get("key") if doc is not None else None
            if isinstance(key, list) and len(key) == 2:
                w = self.watchers.get((str(key[0]), str(key[1])))
                if w is not None:
                    w.poke()

        self._subs = [
            await self.nc.subscribe(CHANGED_SUBJECT, cb=changed),
            await self.nc.subscribe(FORCE_SUBJECT, cb=force),
        ]

    async def _own_loop(self) -> None:
        o = self.ownership
        assert o is not None
        while self.running:
            try:
                await self.rebalance()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync: rebalancing failed; trying again")
            await o.wait_change(self.settings.lease_renew_s)

    async def rebalance(self) -> None:
        """Drop what we lost (all of it when our heartbeat may have expired), then claim or
        give away to reach our share."""
        o = self.ownership
        assert o is not None
        if o.expired():  # others may be taking our accounts over: stop, claim afresh later
            async with self._lock:
                for key in list(self.watchers):
                    await self._unwatch(key)
                    o.drop(key)
            return
        await o.reassert()
        async with self.db.read() as conn:
            accounts = {a.key: a for a in await watchable_accounts(conn)}
        async with self._lock:
            if not self.running:
                return
            for key in list(o.owned):
                account = accounts.get(key)
                if o.taken(key):
                    await self._unwatch(key)
                    o.drop(key)
                elif account is None:
                    await self._unwatch(key)
                    await o.release(key)
                else:
                    self._reconcile(account)
            for key in [k for k in self.watchers if k not in o.owned]:
                await self._unwatch(key)  # a lease dropped elsewhere (reassert): never watch it
            target = o.target(len(accounts))
            if len(o.owned) > target:
                excess = sorted(o.owned, key=o.rank)[target:]
                await asyncio.gather(*(self._unwatch(k) for k in excess))
                await asyncio.gather(*(o.release(k) for k in excess))
            elif len(o.owned) < target:
                free = sorted((k for k in accounts if o.is_free(k)), key=o.rank)
                got = await o.claim_many(free, target - len(o.owned))
                spread = min(self.settings.startup_spread_s, self.settings.default_interval_s)
                for key in got:
                    self._reconcile(accounts[key], random.random() * spread if len(got) > 1 else 0)
        o.publish_metrics()

    async def _unwatch(self, key: Key) -> None:
        w = self.watchers.pop(key, None)
        if w is not None:
            await w.stop()

    def _reconcile(self, account: Account, delay: float = 0.0) -> None:
        """Watch an account we hold; pick up changes another worker's consumer applied."""
        w = self.watchers.get(account.key)
        if w is None:
            w = AccountWatcher(self, account)
            self.watchers[account.key] = w
            w.start(delay)
            return
        rotated = account.credential_version != w.account.credential_version
        w.update(account)
        if rotated:
            w.credential_rotated(account.credential_version)


class _HostGate:
    """Logins at once on one host, up to a limit that may change (live workers come and go)."""

    def __init__(self) -> None:
        self.active = 0
        self._freed = asyncio.Event()

    async def acquire(self, limit: Callable[[], int]) -> None:
        while self.active >= limit():
            self._freed.clear()
            with contextlib.suppress(TimeoutError):  # also re-reads a changed limit
                await asyncio.wait_for(self._freed.wait(), 1.0)
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._freed.set()


def _triples(items: Any) -> list[list[Any]]:
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, list) and len(i) == 3]


def _notice(msg: Any) -> dict[str, Any] | None:
    try:
        doc = json.loads(msg.data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
