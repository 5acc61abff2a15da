"""Several sync workers share the accounts (leases in JetStream KV): each account is watched by
exactly one worker, the share is even, a worker that joins gets its part, and a killed worker's
accounts move to the others within the lease TTL without a gap or a duplicate.

Three ``python -m services.sync`` processes on one nats-server, one PostgreSQL sync database and
one Dovecot; the accounts are created through the registry's HTTP API (credentials leased over
NATS), new mail is delivered into Dovecot while the workers run."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from libs.common.events import Envelope
from libs.common.events.registry import AccountSettings, Server
from libs.common.natsserver import NatsServer
from libs.common.store.database import Database
from services.sync import tables
from services.sync.models import Account
from services.sync.ownership import Ownership
from services.sync.scheduler import SyncEngine
from services.sync.settings import SyncSettings
from services.sync.watcher import AccountWatcher
from tests.integration.test_sync_support import FAST, raw_mail
from tests.support.dovecot import Dovecot
from tests.support.registry import stop
from tests.support.stack import Stack, start_stack, wait_until
from tests.support.sync_workers import SyncWorker, imap_sessions, logins, owners, stored_events

pytestmark = [pytest.mark.connected]

TTL = 3.0
ACCOUNTS = 21


@pytest.fixture
async def registry(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    stack = await start_stack(tmp_path, nats_server, ("registry",))
    try:
        yield stack
    finally:
        await stop(stack)


class Seen:
    """Every MessageReceived on the bus, by account (core NATS: a re-published event, which
    JetStream drops as a duplicate of its id, shows here twice)."""

    def __init__(self) -> None:
        self.received: dict[str, list[int]] = collections.defaultdict(list)
        self.nc: Any = None

    async def listen(self, url: str) -> None:
        self.nc = await nats.connect(url)

        async def on_msg(msg: Any) -> None:
            env = Envelope.from_nats(msg.headers, msg.data)
            if env.event_name == "MessageReceived":
                self.received[env.aggregate_id].append(int(env.data["uid"]))

        await self.nc.subscribe("mailroom.*.sync.>", cb=on_msg)

    def count(self) -> int:
        return sum(len(v) for v in self.received.values())


async def add_account(registry: Stack, dovecot: Dovecot) -> tuple[str, str]:
    user, password = dovecot.new_user("mw")
    body = {
        "address": f"{user}@corp.example",
        "protocol": "imap",
        "incoming": {"host": dovecot.host, "port": dovecot.imap_port, "security": "starttls"},
        "outgoing": {"host": dovecot.host, "port": 25, "security": "starttls"},  # not used
        "username": user,
        "password": password,
        "polling_interval_s": 30,  # new mail arrives by IDLE
    }
    r = await registry.call("POST", "/v1/accounts", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"]), user


@pytest.mark.postgres
async def test_workers_share_accounts_and_take_over_a_killed_one(
    tmp_path: Path, nats_server: NatsServer, dovecot: Dovecot, registry: Stack, pg_url: str
) -> None:
    env = {
        **FAST,
        "MAILROOM_NATS_URL": nats_server.url,
        "MAILROOM_DATA_DIR": str(tmp_path / "data"),  # the registry's token key: same issuer
        "MAILROOM_SYNC_DATABASE_URL": pg_url,
        "MAILROOM_SYNC_CA_FILE": str(dovecot.ca_path),
        "MAILROOM_SYNC_LEASE_TTL_S": str(TTL),
        "MAILROOM_SYNC_LEASE_RENEW_S": "0.5",
        "MAILROOM_LOG_LEVEL": "WARNING",
    }
    workers = [SyncWorker(f"w{i}", tmp_path, env) for i in (1, 2, 3)]
    js = registry.host.runtime.js
    seen = Seen()
    await seen.listen(nats_server.url)
    try:
        workers[0].start()  # alone first (one schema migration), then the others join
        accounts = dict([await add_account(registry, dovecot) for _ in range(ACCOUNTS)])
        users = set(accounts.values())

        async def held_by(expected: dict[str, int]) -> dict[str, str] | None:
            now = await owners(js)
            spread = collections.Counter(now.values())
            ok = set(now) == set(accounts) and dict(spread) == expected
            return now if ok else None

        async def one_session_each() -> None:
            """Until Dovecot counts exactly one IMAP connection per user."""
            deadline = time.monotonic() + 30
            while True:
                sessions = imap_sessions(dovecot)
                odd = {u: sessions[u] for u in users if sessions[u] != 1}
                if not odd:
                    return
                if time.monotonic() > deadline:
                    who = dovecot.doveadm("who", "-1")
                    held_now = await owners(js)
                    mine = {u: a for a, u in accounts.items() if u in odd}
                    pytest.fail(
                        f"IMAP connections per user: {odd}; owners "
                        f"{ {u: held_now.get(a) for u, a in mine.items()} }\n{who}"
                    )
                await asyncio.sleep(0.2)

        await wait_until(lambda: held_by({"w1": ACCOUNTS}), timeout=60, interval=0.2)
        await one_session_each()
        workers[1].start()
        workers[2].start()
        held = await wait_until(
            lambda: held_by({"w1": 7, "w2": 7, "w3": 7}), timeout=60, interval=0.2
        )
        assert held is not None
        await one_session_each()
        assert max(imap_sessions(dovecot)[u] for u in users) == 1
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{workers[0].url}/metrics")).text
        assert 'mailroom_sync_owned_accounts{worker="w1"} 7.0' in metrics
        assert "mailroom_sync_live_workers 3.0" in metrics

        for user in users:  # mail while three workers watch
            dovecot.deliver(user, raw_mail(f"first {user}"))
        await wait_until(lambda: _async(seen.count() >= ACCOUNTS), timeout=30)

        # w3 dies without a word: its leases stay until its heartbeat expires.
        victims = {a for a, w in held.items() if w == "w3"}
        t0 = time.monotonic()
        workers[2].kill()
        for account in victims:  # delivered while nobody watches these mailboxes
            dovecot.deliver(accounts[account], raw_mail(f"orphan {account}"))
        after = await wait_until(
            lambda: _held_by_live(js, set(accounts), {"w1", "w2"}), timeout=TTL + 10, interval=0.1
        )
        took = time.monotonic() - t0
        assert after is not None
        assert took < TTL + 3, f"takeover took {took:.1f}s (TTL {TTL}s)"
        assert sorted(collections.Counter(after.values()).values()) == [10, 11]
        await wait_until(lambda: _async(seen.count() >= ACCOUNTS + len(victims)), timeout=30)
        await one_session_each()
        await asyncio.sleep(2.0)  # a few more polls by everyone: nothing twice
        stored: dict[str, list[int]] = collections.defaultdict(list)  # the stream's events
        for stored_env in await stored_events(js, "mailroom.*.sync.mailbox.*.MessageReceived"):
            stored[stored_env.aggregate_id].append(int(stored_env.data["uid"]))
        for account in accounts:
            uids = stored[account]
            assert len(uids) == len(set(uids)), f"{account}: duplicate MessageReceived {uids}"
            assert len(uids) == (2 if account in victims else 1)
            assert set(seen.received[account]) == set(uids)
        per_user = logins(dovecot)
        assert max(per_user[u] for u in users) <= 4  # first owner, hand-over, take-over
        for w in workers[:2]:
            w.stop()
        assert await owners(js) == {}  # a clean stop gives the leases back
    finally:
        for w in workers:
            w.kill()
        if seen.nc is not None:
            await seen.nc.close()
        for w in workers:
            print(f"--- {w.name}\n{w.logs()}")


async def test_a_cluster_wide_login_cap_is_shared_by_the_live_workers(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """``per_host_logins_total`` 3: alone a worker logs in 3 at once per host; with a second
    live worker 1; when that one dies (its heartbeat expires), 3 again."""
    settings = SyncSettings(
        per_host_logins_total=3, lease_ttl_s=TTL, lease_renew_s=0.5, ownership="kv"
    )
    nc = await nats.connect(nats_server.url)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}", tables.metadata)
    engine = SyncEngine(db, settings)
    engine.ownership = Ownership(nc.jetstream(), settings, "a")
    other = Ownership(nc.jetstream(), settings, "b")
    try:
        await engine.ownership.open()
        assert engine.host_limit() == 3
        await other.open()
        await wait_until(lambda: _async(engine.host_limit() == 1))
        entered = asyncio.Event()

        async def second() -> None:
            async with engine.host_slot("imap.example.com"):
                entered.set()

        async with engine.host_slot("IMAP.example.com"):
            task = asyncio.create_task(second())
            await asyncio.sleep(0.3)
            assert not entered.is_set()  # one login at a time on this host now
        await asyncio.wait_for(entered.wait(), 2)
        await task
        await other.close(release=False)  # dies: its heartbeat stays until the TTL
        t0 = time.monotonic()
        await wait_until(lambda: _async(engine.host_limit() == 3), timeout=TTL + 3)
        assert time.monotonic() - t0 > TTL / 2
    finally:
        await engine.ownership.close()
        await db.dispose()
        await nc.close()


async def test_a_view_reload_keeps_the_leases_and_no_watcher_outlives_its_lease(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A failed heartbeat stops the KV watches; while they reload, ``reassert`` must not take
    the empty view for a lost bucket (it used to drop the leases and leave their watchers
    running). And a watcher whose lease is gone, however, is stopped at the next rebalance."""
    settings = SyncSettings(lease_ttl_s=TTL, lease_renew_s=0.5, ownership="kv")
    nc = await nats.connect(nats_server.url)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}", tables.metadata)
    await db.create_all()
    engine = SyncEngine(db, settings)
    o = engine.ownership = Ownership(nc.jetstream(), settings, "a")
    try:
        await o.open()
        key = ("t1", "acct-1")
        assert await o.claim(key)
        await o._stop_watches()  # what a failed heartbeat does
        await o.reassert()
        assert key in o.owned  # still ours: nothing was written, nothing dropped
        assert await o.heartbeat()  # watches again
        await o.reassert()
        assert key in o.owned

        stray = AccountWatcher(engine, _account("t1", "acct-2"))
        engine.watchers[stray.key] = stray  # a watcher without a lease
        engine.running = True
        await engine.rebalance()
        assert stray.key not in engine.watchers
        assert key not in o.owned  # no such account in the sync database: given back
    finally:
        await o.close()
        await db.dispose()
        await nc.close()


def _account(tenant: str, account: str) -> Account:
    incoming = Server(protocol="imap", host="127.0.0.1", port=1, security="ssl")
    return Account(
        tenant,
        account,
        "a@corp.example",
        "imap",
        AccountSettings(incoming=incoming),
        True,
        1,
        datetime.now(UTC),
    )


async def _async(value: bool) -> bool:
    return value


async def _held_by_live(js: Any, accounts: set[str], live: set[str]) -> dict[str, str] | None:
    now = await owners(js)
    ok = set(now) == accounts and set(now.values()) <= live
    return now if ok else None
