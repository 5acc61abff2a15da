"""Which sync worker watches which account: leases in JetStream KV, no coordinator of our own.

Two buckets (memory storage; names from ``MAILROOM_SYNC_LEASE_BUCKET``):

* ``<bucket>_workers`` — one key per live worker, put every ``lease_renew_s``. The bucket's TTL
  (``lease_ttl_s``) removes a silent worker's key, and the server then stores a delete marker
  (subject delete markers, nats-server ≥ 2.11) that every watcher sees at once.
* ``<bucket>_accounts`` — one key per claimed account (``<tenant>.<account>``), its value the
  owner's worker id. Claimed with a compare-and-set on the revision last seen (``create`` for a
  key never written), released with a compare-and-set delete.

An account's lease lives as long as its owner's heartbeat: renewing is one put per worker, not
one per account, and each worker watches both buckets, which change only when workers come and
go or accounts change hands (a view that stays small and quiet at any number of accounts). When
a worker dies, its heartbeat expires within ``lease_ttl_s`` and the others take its accounts
over, each with a compare-and-set on the revision they saw — exactly one taker wins.

Fencing: the heartbeat runs in a task of its own (a slow rebalance never makes a worker look
dead). A worker whose heartbeat has not been renewed for ``0.8 * lease_ttl_s`` (NATS away, the
process starved) holds back new logins (:meth:`Ownership.wait_valid`), and the engine stops its
watchers once the lease may have expired; a key that moved to another worker stops the watcher
at once (the watch shows it).

Balance: a worker caps itself at ``ceil(accounts / live workers)``; above it, it releases the
accounts it ranks lowest (rendezvous hashing on worker id + key, so workers prefer different
accounts and claim races are rare), below it, it claims free ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from prometheus_client import Gauge

from services.sync.settings import SyncSettings

log = logging.getLogger("mailroom.sync.ownership")

Key = tuple[str, str]  # (tenant_id, account_id)
_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_GRACE_S = 1.0

owned_accounts = Gauge(
    "mailroom_sync_owned_accounts",
    "Accounts this sync worker holds the lease of (and watches).",
    ["worker"],
)
live_workers_gauge = Gauge(
    "mailroom_sync_live_workers", "Sync workers with a live heartbeat, as this worker sees them."
)


def default_worker_id() -> str:
    host = _SAFE.sub("-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def kv_key(key: Key) -> str:
    """``<tenant>.<account>`` (both are subject tokens already: ``[A-Za-z0-9_-]``)."""
    return ".".join(_SAFE.sub(lambda m: f"={ord(m.group()):x}", part) for part in key)


def key_of(name: str) -> Key | None:
    tenant, _, account = name.partition(".")
    if not tenant or not account or "=" in name:
        return None
    return tenant, account


@dataclass
class Seen:
    """The last entry of an account key the watch delivered."""

    owner: str | None  # None: deleted, purged or expired
    revision: int


class Ownership:
    def __init__(self, js: Any, settings: SyncSettings, worker_id: str | None = None) -> None:
        self.js = js
        self.worker_id = _SAFE.sub("-", worker_id or settings.worker_id or default_worker_id())
        self.ttl = settings.lease_ttl_s
        self.renew_s = settings.lease_renew_s
        self.bucket = settings.lease_bucket
        self.owned: dict[Key, int] = {}  # key -> revision of our claim
        self.accounts: dict[Key, Seen] = {}
        self.workers: dict[str, float] = {}  # worker id -> when its heartbeat was last seen
        self.changed = asyncio.Event()
        self.heartbeat_ok_at = -math.inf
        self.claims = self.releases = self.lost = 0
        self._accounts_kv: Any = None
        self._workers_kv: Any = None
        self._watches: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: list[asyncio.Event] = []
        self._beat_task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        await self._watch()
        await self.heartbeat()
        self._beat_task = asyncio.create_task(self._beat(), name="sync-heartbeat")

    async def _beat(self) -> None:
        """The heartbeat on its own: a slow rebalance never makes this worker look dead."""
        while True:
            await asyncio.sleep(self.renew_s)
            await self.heartbeat()
            if not self.valid():
                self.changed.set()  # the engine fences (stops watching) at once

    async def _watch(self) -> None:
        self._workers_kv = await self._bucket(f"{self.bucket}_workers", self.ttl)
        self._accounts_kv = await self._bucket(f"{self.bucket}_accounts", None)
        for kv, apply in (
            (self._workers_kv, self._on_worker),
            (self._accounts_kv, self._on_account),
        ):
            ready = asyncio.Event()
            watch = await kv.watch(">")
            self._watches.append(watch)
            self._ready.append(ready)
            self._tasks.append(asyncio.create_task(self._follow(watch, apply, ready)))
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in self._ready)), 30)

    async def _stop_watches(self) -> None:
        for t in self._tasks:
            t.cancel()
        for w in self._watches:
            with contextlib.suppress(Exception):
                await w.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks, self._watches, self._ready = [], [], []

    async def _bucket(self, name: str, ttl: float | None) -> Any:
        config = KeyValueConfig(
            bucket=name,
            history=1,
            ttl=ttl,
            storage=StorageType.MEMORY,
            limit_marker_ttl=ttl,
            description="mailroom sync ownership (services/sync/ownership.py)",
        )
        try:
            return await self.js.create_key_value(config)
        except Exception as exc:  # exists with another configuration (another TTL): use it
            try:
                kv = await self.js.key_value(name)
            except BucketNotFoundError:
                raise exc from None
            if ttl is not None:
                self.ttl = (await kv.status()).ttl or ttl
            return kv

    async def close(self, *, release: bool = True) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            await asyncio.gather(self._beat_task, return_exceptions=True)
        if release:
            await asyncio.gather(*(self.release(k) for k in list(self.owned)))
            with contextlib.suppress(Exception):
                await self._workers_kv.delete(self.worker_id)
        await self._stop_watches()
        with contextlib.suppress(KeyError):
            owned_accounts.remove(self.worker_id)

    async def _follow(self, watch: Any, apply: Any, ready: asyncio.Event) -> None:
        while True:
            try:
                async for entry in watch:
                    if entry is None:
                        ready.set()
                        continue
                    apply(entry)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the view alive
                log.warning("ownership watch: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(0.5)

    def _on_worker(self, entry: Any) -> None:
        loop = asyncio.get_running_loop()
        known = entry.key in self.workers
        if entry.operation in ("DEL", "PURGE"):
            self.workers.pop(entry.key, None)
            if known:
                self.changed.set()  # a worker left: its accounts are free
        else:
            self.workers[entry.key] = loop.time()
            if not known:
                self.changed.set()  # a worker joined: maybe give some away

    def _on_account(self, entry: Any) -> None:
        key = key_of(entry.key)
        if key is None:
            return
        known = self.accounts.get(key)
        if known is not None and int(entry.revision) < known.revision:
            return  # our own claim, written into the view before its echo came back
        owner = None if entry.operation in ("DEL", "PURGE") else (entry.value or b"").decode()
        self.accounts[key] = Seen(owner or None, int(entry.revision))
        mine = self.owned.get(key)
        if owner is None or (mine is not None and owner != self.worker_id):
            self.changed.set()  # free, or taken from us

    # --- liveness ---------------------------------------------------------------------------
    async def heartbeat(self) -> bool:
        try:
            if not self._tasks:  # the buckets were lost (a restarted nats-server): again
                self.accounts.clear()
                await self._watch()
            await self._workers_kv.put(self.worker_id, str(len(self.owned)).encode())
        except Exception as exc:
            log.warning("sync worker heartbeat failed: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                await self._stop_watches()
            return False
        loop = asyncio.get_running_loop()
        self.heartbeat_ok_at = loop.time()
        self.workers[self.worker_id] = loop.time()
        return True

    def _alive(self, worker: str | None) -> bool:
        if worker is None:
            return False
        seen = self.workers.get(worker)
        if seen is None:
            return False
        return asyncio.get_running_loop().time() - seen <= self.ttl + _GRACE_S

    def valid(self) -> bool:
        """Our heartbeat is fresh enough that no other worker can have taken our accounts."""
        return asyncio.get_running_loop().time() - self.heartbeat_ok_at < 0.8 * self.ttl

    def expired(self) -> bool:
        """Our heartbeat may have expired: others may be taking our accounts over."""
        return asyncio.get_running_loop().time() - self.heartbeat_ok_at >= self.ttl

    async def wait_valid(self) -> None:
        while not self.valid():
            await asyncio.sleep(min(0.2, self.renew_s))

    def live_workers(self) -> int:
        return max(1, sum(1 for w in self.workers if self._alive(w)))

    def target(self, total: int) -> int:
        return math.ceil(total / self.live_workers())

    # --- accounts ---------------------------------------------------------------------------
    def owner(self, key: Key) -> str | None:
        """The live owner of an account, if any."""
        seen = self.accounts.get(key)
        return seen.owner if seen is not None and self._alive(seen.owner) else None

    def is_free(self, key: Key) -> bool:
        if key in self.owned:
            return False
        seen = self.accounts.get(key)
        return seen is None or seen.owner == self.worker_id or not self._alive(seen.owner)

    def taken(self, key: Key) -> bool:
        """We held it, and the watch shows another worker holding it now."""
        seen = self.accounts.get(key)
        mine = self.owned.get(key)
        if mine is None or seen is None or seen.revision < mine:
            return False
        return seen.owner != self.worker_id or seen.revision != mine

    def rank(self, key: Key) -> int:
        digest = hashlib.blake2b(f"{self.worker_id}|{kv_key(key)}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big")

    async def claim(self, key: Key) -> bool:
        """Take the lease of a free account (compare-and-set on the revision seen).

        Freeness is judged on the view at this very moment, and the write is conditional on
        that view's revision: a claim the view shows since (someone else's) is never
        overwritten, and one the view does not show yet makes the write fail."""
        if not self.is_free(key):
            return False
        seen = self.accounts.get(key)
        last = seen.revision if seen is not None else 0
        try:
            revision = await self._accounts_kv.update(
                kv_key(key), self.worker_id.encode(), last=last
            )
        except KeyWrongLastSequenceError:
            return False  # somebody else was quicker (or our view is behind: next round)
        except Exception as exc:
            log.warning("claiming %s failed: %s: %s", kv_key(key), type(exc).__name__, exc)
            return False
        self.owned[key] = int(revision)
        self.accounts[key] = Seen(self.worker_id, int(revision))
        self.claims += 1
        return True

    async def release(self, key: Key) -> None:
        revision = self.owned.pop(key, None)
        if revision is None:
            return
        self.releases += 1
        with contextlib.suppress(Exception):  # gone or taken already: nothing to give back
            await self._accounts_kv.delete(kv_key(key), last=revision)

    def view_ready(self) -> bool:
        """Both watches run and delivered what the buckets held (not mid-reload)."""
        return len(self._ready) == 2 and all(r.is_set() for r in self._ready)

    async def reassert(self) -> None:
        """Keys we hold that the bucket lost (a restarted nats-server): write them again."""
        if not self.view_ready():  # a view being reloaded is not a lost bucket
            return
        for key in [k for k in self.owned if k not in self.accounts]:
            try:
                revision = await self._accounts_kv.update(
                    kv_key(key), self.worker_id.encode(), last=0
                )
            except Exception:
                self.drop(key)
                continue
            self.owned[key] = int(revision)
            self.accounts[key] = Seen(self.worker_id, int(revision))

    def drop(self, key: Key) -> None:
        """Forget a lease another worker holds now (nothing to release)."""
        if self.owned.pop(key, None) is not None:
            self.lost += 1

    async def claim_many(self, keys: Iterable[Key], want: int) -> list[Key]:
        """Claim up to ``want`` of ``keys`` (in order), a few at a time."""
        got: list[Key] = []
        pending = list(keys)
        while pending and len(got) < want:
            n = min(64, want - len(got))
            chunk, pending = pending[:n], pending[n:]
            ok = await asyncio.gather(*(self.claim(k) for k in chunk))
            got += [k for k, won in zip(chunk, ok, strict=True) if won]
        return got

    def publish_metrics(self) -> None:
        owned_accounts.labels(worker=self.worker_id).set(len(self.owned))
        live_workers_gauge.set(self.live_workers())

    async def wait_change(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()
