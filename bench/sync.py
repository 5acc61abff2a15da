"""Sync benchmark: one sync worker watching many mailboxes on a local Dovecot, in one run with
the raw client baseline.

(a) raw: aioimaplib connect + LOGIN + SELECT INBOX + LOGOUT, ``--concurrency`` at once — the
    fastest a client can open sessions against this server.
(b) mailroom: the sync service (embedded nats-server, SQLite) watching ``--accounts`` accounts
    at ``--interval`` s: time until every account is online (logins/s through the service),
    memory per 1,000 watched accounts (process RSS), and over ``--window`` s of steady state
    the poll cost (wall and CPU per poll) and the accounts one core keeps at a 60 s interval.
(c) IDLE latency: ``--deliveries`` messages delivered (``doveadm save``, its own run time
    included) to idling accounts, until ``MessageReceived`` arrives on NATS; p50 / p99.

    python bench/sync.py [--accounts 1000] [--interval 60] [--window 30] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aioimaplib
import nats

from libs.common.events import AccountAdded, AccountSettings, CommandContext, Envelope, Server
from libs.common.host import Host
from libs.common.ids import new_id
from libs.common.natsserver import NatsServer
from libs.common.settings import Settings
from services.sync.app import SyncService, create_app
from services.sync.ports import StaticCredentials
from services.sync.settings import SyncSettings
from tests.support.dovecot import Dovecot


class BenchDovecot(Dovecot):
    """The test Dovecot with process limits raised for a thousand concurrent sessions."""

    def _config(self) -> str:
        conf = super()._config()
        conf = conf.replace(
            "protocols = imap pop3\n",
            "protocols = imap pop3\ndefault_process_limit = 3000\ndefault_client_limit = 20000\n"
            "default_vsz_limit = 0\n",
            1,
        )
        return conf


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def raw_logins(d: Dovecot, users: list[tuple[str, str]], concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(user: str, pw: str) -> None:
        async with sem:
            c = aioimaplib.IMAP4(d.host, d.imap_port, timeout=10)
            await c.wait_hello_from_server()
            assert (await c.login(user, pw)).result == "OK"
            assert (await c.select("INBOX")).result == "OK"
            await c.logout()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(u, p) for u, p in users))
    return len(users) / (time.perf_counter() - t0)


def raw_mail(i: int) -> bytes:
    return (
        f"From: Bench <bench@example.test>\r\nTo: user@example.test\r\nSubject: bench {i}\r\n"
        f"Message-ID: <bench-{i}@example.test>\r\n\r\nbody\r\n"
    ).encode()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mailroom-bench-sync-"))
    d = BenchDovecot()
    d.start()
    nats_server = NatsServer(root / "nats")
    nats_server.start()
    host: Host | None = None
    nc: Any = None
    try:
        users = [d.new_user("b") for _ in range(args.accounts)]
        raw_rate = await raw_logins(d, users[: args.raw_logins], args.concurrency)

        settings = Settings(data_dir=root / "data", nats_url=nats_server.url)
        sync_settings = SyncSettings(
            default_interval_s=args.interval,
            min_interval_s=1,
            max_connections=min(args.max_connections, args.accounts),
            idle_connections=args.idle,
            max_concurrent_polls=args.concurrency * 8,
            per_host_logins=args.concurrency,
            startup_spread_s=0,
        )
        svc = create_app(settings, sync_settings)
        assert isinstance(svc, SyncService)
        creds = StaticCredentials()
        svc.use_credentials(creds)
        host = Host([svc], settings, nats_server.url)
        await host.start()
        engine = svc.engine
        assert engine is not None
        nc = await nats.connect(nats_server.url)
        received: dict[str, float] = {}

        async def on_msg(msg: Any) -> None:
            env = Envelope.from_nats(msg.headers, msg.data)
            if env.event_name == "MessageReceived":
                received[str(env.data["subject"])] = time.perf_counter()

        await nc.subscribe("mailroom.*.sync.>", cb=on_msg)

        rss0, t0 = rss_mb(), time.perf_counter()
        accounts: list[tuple[str, str]] = []
        js = host.runtime.js
        for i, (user, pw) in enumerate(users):
            acc = new_id()
            accounts.append((acc, user))
            creds.set("bench", acc, user, pw)
            server = Server(protocol="imap", host=d.host, port=d.imap_port, security="none")
            event = AccountAdded(
                address=f"{user}@example.test",
                protocol="imap",
                settings=AccountSettings(
                    incoming=server,
                    username=user,
                    polling_interval_s=args.interval,
                    allow_insecure=True,
                ),
            )
            env = Envelope.wrap(
                event,
                CommandContext("bench", "admin:bench"),
                aggregate_id=acc,
                aggregate_version=1,
            )
            await js.publish(env.nats_subject, env.body(), headers=env.to_headers())
            if i % 200 == 199:
                await asyncio.sleep(0)

        async def online() -> int:
            from sqlalchemy import func, select

            from services.sync.tables import status

            async with svc.db.read() as conn:
                q = select(func.count()).where(status.c.state == "online")
                return int((await conn.execute(q)).scalar() or 0)

        while await online() < args.accounts:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"only {await online()} of {args.accounts} online after 600 s")
            await asyncio.sleep(0.2)
        ramp_s = time.perf_counter() - t0
        await asyncio.sleep(2)
        rss1 = rss_mb()

        # steady state: polls at the interval (and IDLE on some accounts)
        polls0, secs0, cpu0, w0 = (
            engine.stats.polls,
            engine.stats.poll_seconds,
            cpu_s(),
            time.perf_counter(),
        )
        await asyncio.sleep(args.window)
        polls = engine.stats.polls - polls0
        wall = time.perf_counter() - w0
        cpu = cpu_s() - cpu0
        poll_wall_ms = 1000 * (engine.stats.poll_seconds - secs0) / max(polls, 1)
        cpu_ms = 1000 * cpu / max(polls, 1)

        # IDLE latency
        idlers = [(a, u) for a, u in accounts if engine.watchers[("bench", a)].idle_slot]
        latencies: list[float] = []
        for i in range(args.deliveries):
            _, user = idlers[i % len(idlers)]
            subject = f"bench {i}"
            t = time.perf_counter()
            await asyncio.to_thread(d.doveadm, "save", "-u", user, "-m", "INBOX", input=raw_mail(i))
            while subject not in received and time.perf_counter() - t < 10:
                await asyncio.sleep(0.002)
            if subject in received:
                latencies.append(1000 * (received[subject] - t))
        return {
            "accounts": args.accounts,
            "interval_s": args.interval,
            "open_connections": engine.open_connections,
            "idle_connections": len(idlers),
            "raw_aioimaplib_login_select_per_s": round(raw_rate, 1),
            "sync_ramp_s": round(ramp_s, 2),
            "sync_accounts_online_per_s": round(args.accounts / ramp_s, 1),
            "rss_mb_per_1000_accounts": round((rss1 - rss0) * 1000 / args.accounts, 1),
            "rss_mb_total": round(rss1, 1),
            "steady_window_s": round(wall, 1),
            "steady_polls": polls,
            "polls_per_s": round(polls / wall, 1),
            "poll_wall_ms": round(poll_wall_ms, 2),
            "poll_cpu_ms": round(cpu_ms, 3),
            "cpu_share": round(cpu / wall, 3),
            "accounts_per_core_at_60s": int(60 * 1000 / cpu_ms) if cpu_ms > 0 else None,
            "idle_deliveries": len(latencies),
            "idle_latency_ms_p50": round(pct(latencies, 50), 1),
            "idle_latency_ms_p99": round(pct(latencies, 99), 1),
            "logins_total": engine.stats.logins,
            "failures_total": engine.stats.failures,
            "cpus": os.cpu_count(),
        }
    finally:
        if nc is not None:
            await nc.close()
        if host is not None:
            await host.stop()
        nats_server.stop()
        d.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def table(r: dict[str, Any]) -> str:
    rows = [
        ("raw aioimaplib login+select+logout", f"{r['raw_aioimaplib_login_select_per_s']} /s"),
        (
            "sync: accounts brought online",
            f"{r['sync_accounts_online_per_s']} /s ({r['accounts']} in {r['sync_ramp_s']} s)",
        ),
        ("memory per 1,000 watched accounts", f"{r['rss_mb_per_1000_accounts']} MB RSS"),
        (
            "steady polls (interval " + str(r["interval_s"]) + " s)",
            f"{r['polls_per_s']} /s over {r['steady_window_s']} s",
        ),
        ("poll cost", f"{r['poll_wall_ms']} ms wall, {r['poll_cpu_ms']} ms CPU"),
        ("worker CPU share in steady state", f"{100 * r['cpu_share']:.1f} %"),
        ("accounts per core at 60 s (CPU bound)", str(r["accounts_per_core_at_60s"])),
        (
            "IDLE delivery -> MessageReceived",
            f"p50 {r['idle_latency_ms_p50']} ms, p99 {r['idle_latency_ms_p99']} ms "
            f"({r['idle_deliveries']} via {r['idle_connections']} idling accounts)",
        ),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--idle", type=int, default=200, help="idle connection budget")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="connections kept open (Dovecot runs one imap process per open connection); "
        "the other accounts log in at each poll",
    )
    parser.add_argument("--deliveries", type=int, default=100)
    parser.add_argument("--raw-logins", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    result = asyncio.run(main(ns))
    print(table(result))
    if ns.json:
        print(json.dumps(result))
