"""Event pipeline benchmark: Mailroom's write path next to raw JetStream, in the same run.

(a) raw: nats-py JetStream publish with Nats-Msg-Id, pipelined (publish_async), consumed by a
    durable pull consumer with fetch + ack.
(b) mailroom: commands appended through the event store (one command = one transaction with its
    event, projection row and outbox row) → outbox relay → JetStream → a projection consumer and
    the audit store, end to end (until both have applied every event).
Latency: commit → audit persistence, paced at a fixed rate.

    python bench/pipeline.py [--events 20000] [--rate 1000] [--seconds 5] [--json]
        [--postgres postgresql+asyncpg://USER@HOST/DB]

The embedded default stores in SQLite files. With ``--postgres`` (a database the user may
``CREATE DATABASE`` from) every service gets its own fresh PostgreSQL database instead, as in
production; they are dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.consumer import Projection
from libs.common.events import CommandContext, EmployeeAdded, Envelope
from libs.common.host import Host, tune_gc
from libs.common.ids import new_id
from libs.common.nats import connect, ensure_streams
from libs.common.natsserver import NatsServer
from libs.common.outbox import OutboxRelay
from libs.common.service import Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from services.audit.app import create_app as create_audit


def loop_in_use(choice: str) -> str:
    return "uvloop" if choice == "auto" and importlib.util.find_spec("uvloop") else "asyncio"


def run_on_service_loop(coro: Any, choice: str) -> Any:
    """Run on the event loop the services run on: uvicorn's ``loop="auto"`` (uvloop when
    installed), as ``mailroom up`` and ``python -m services.<name>`` do."""
    factory = None
    if loop_in_use(choice) == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def db_url(data: Path, name: str, template: str | None) -> str:
    """The database of ``name``: SQLite in ``data``, or ``template`` with ``{service}``."""
    if template:
        return template.replace("{service}", name)
    return f"sqlite+aiosqlite:///{data / f'{name}.db'}"


async def pg_databases(base: str, names: Sequence[str]) -> tuple[str, Any]:
    """Fresh databases ``<prefix>_<name>`` next to ``base``; (URL template, drop coroutine fn)."""
    import asyncpg

    admin = await asyncpg.connect(base.replace("postgresql+asyncpg://", "postgresql://"))
    prefix = f"mrbench_{new_id().replace('-', '')[-10:]}"
    for name in names:
        await admin.execute(f'CREATE DATABASE "{prefix}_{name}"')

    async def drop() -> None:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{prefix}_{name}" WITH (FORCE)')
        await admin.close()

    root, _, _ = base.rpartition("/")
    return f"{root}/{prefix}_{{service}}", drop


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def raw_baseline(url: str, n: int) -> float:
    nc = await connect(url, name="bench-raw")
    js = nc.jetstream()
    await js.add_stream(name="RAW", subjects=["raw.>"])
    sub = await js.pull_subscribe("raw.>", durable="raw", stream="RAW")
    payload = json.dumps({"name": "Person", "email": "p@example.com"}).encode()
    consumed = 0

    async def consume() -> None:
        nonlocal consumed
        while consumed < n:
            try:
                msgs = await sub.fetch(256, timeout=1)
            except TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            consumed += len(msgs)

    start = time.perf_counter()
    consumer = asyncio.create_task(consume())
    futures = []
    for i in range(n):
        futures.append(
            await js.publish_async(f"raw.e.{i % 100}", payload, headers={"Nats-Msg-Id": new_id()})
        )
        if len(futures) >= 1000:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    await consumer
    elapsed = time.perf_counter() - start
    await nc.close()
    return n / elapsed


class Sink:
    """The benchmark's projection: one row per event."""

    def __init__(self) -> None:
        self.metadata = MetaData()
        self.table = Table("sink", self.metadata, Column("event_id", String(36), primary_key=True))

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None:
        await conn.execute(insert(self.table), [{"event_id": e.id} for e in events])


class Writer:
    """The writing service: commands through the event store, and its outbox relay."""

    def __init__(self, url: str, data: Path, db_template: str | None = None) -> None:
        self.url = url
        self.data = data
        self.db_template = db_template

    async def start(self) -> None:
        self.db = Database(db_url(self.data, "producer", self.db_template), MetaData())
        await self.db.create_all()
        self.nc = await connect(self.url, name="bench-producer")
        await ensure_streams(self.nc.jetstream())
        self.relay = OutboxRelay(self.db, self.nc.jetstream())
        self.relay_task = asyncio.create_task(self.relay.run())

    async def command(self, i: int) -> tuple[str, float]:
        """One command: one new employee, its own transaction; returns (event id, commit time)."""
        env = Envelope.wrap(
            EmployeeAdded(name=f"Person {i}", email=f"p{i}@example.com"),
            CommandContext("bench", "admin:bench"),
            aggregate_id=new_id(),
            aggregate_version=1,
        )
        await self.db.commit([env], expected_version=0)
        return env.id, time.perf_counter()

    async def run_commands(self, n: int, concurrency: int) -> None:
        queue = iter(range(n))

        async def worker() -> None:
            for i in queue:
                await self.command(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def paced(self, rate: int, seconds: float) -> dict[str, float]:
        """Commands at a fixed rate; their commit times by event id."""
        interval = 1.0 / rate
        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.command(i)))
        return dict([await t for t in tasks])

    async def stop(self) -> None:
        self.relay.stop()
        self.relay_task.cancel()
        await asyncio.gather(self.relay_task, return_exceptions=True)
        await self.nc.close()
        await self.db.dispose()


class MailroomPath:
    """The consumers (audit store + a projection) in one host; the writer in this process
    (everything on one event loop, as ``mailroom up`` runs) or in a child process (the writing
    service as its own process, as each service runs as a pod). perf_counter is the system's
    monotonic clock, so commit and audit times of two processes compare."""

    def __init__(
        self, url: str, data: Path, writer_process: bool = False, db_template: str | None = None
    ) -> None:
        self.url = url
        self.data = data
        self.db_template = db_template
        self.audit_done: dict[str, float] = {}
        self.sink_count = 0
        self.loop_cpu_us = 0.0
        self.writer_process = writer_process

    async def start(self) -> None:
        settings = Settings(data_dir=self.data, database_url=self.db_template)
        sink = Sink()
        sink_db = Database(db_url(self.data, "sink", self.db_template), sink.metadata)
        sink_svc = Service(
            "sink", sink_db, settings, writes_events=False,
            projections=[Projection("sink", "mailroom.*.registry.>", sink.apply)],
        )  # fmt: skip
        self.host = Host([create_audit(settings), sink_svc], settings, self.url)
        await self.host.start()
        self.host.service("audit").consumers[0].on_applied.append(self._audited)
        sink_svc.consumers[0].on_applied.append(self._sunk)
        if self.writer_process:
            self.child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--writer", self.url, str(self.data),
                self.db_template or "-",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=1 << 26,  # the paced run's commit times come back as one JSON line
            )  # fmt: skip
            await self._from_child()  # "ready"
        else:
            self.writer = Writer(self.url, self.data, self.db_template)
            await self.writer.start()

    async def _to_child(self, *words: object) -> None:
        assert self.child.stdin is not None
        self.child.stdin.write((" ".join(map(str, words)) + "\n").encode())
        await self.child.stdin.drain()

    async def _from_child(self) -> Any:
        assert self.child.stdout is not None
        line = await self.child.stdout.readline()
        if not line:
            raise RuntimeError("the writer process ended")
        return json.loads(line)

    def _audited(self, events: Sequence[Envelope]) -> None:
        now = time.perf_counter()
        for e in events:
            self.audit_done[e.id] = now

    def _sunk(self, events: Sequence[Envelope]) -> None:
        self.sink_count += len(events)

    async def throughput(self, n: int, concurrency: int) -> float:
        self.audit_done.clear()
        self.sink_count = 0
        start, cpu = time.perf_counter(), time.thread_time()
        if self.writer_process:
            await self._to_child("run", n, concurrency)
            await self._from_child()
        else:
            await self.writer.run_commands(n, concurrency)
        await self._until(lambda: len(self.audit_done) >= n and self.sink_count >= n, n)
        # CPU of this event loop's thread per event: what bounds one process (the GIL)
        self.loop_cpu_us = (time.thread_time() - cpu) / n * 1e6
        return n / (time.perf_counter() - start)

    async def _until(self, done: Any, n: int) -> None:
        """Wait until ``done()``; fail loudly if nothing moves for 30 s (a stuck pipeline)."""
        last, moved = (-1, -1), time.perf_counter()
        while not done():
            now = (len(self.audit_done), self.sink_count)
            if now != last:
                last, moved = now, time.perf_counter()
            elif time.perf_counter() - moved > 30:
                raise RuntimeError(f"stuck: audited {now[0]}, projected {now[1]} of {n}")
            await asyncio.sleep(0.002)

    async def latency(self, rate: int, seconds: float) -> list[float]:
        self.audit_done.clear()
        if self.writer_process:
            await self._to_child("paced", rate, seconds)
            committed: dict[str, float] = await self._from_child()
        else:
            committed = await self.writer.paced(rate, seconds)
        deadline = time.perf_counter() + 30
        while len(self.audit_done) < len(committed) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        return [
            (self.audit_done[k] - v) * 1000 for k, v in committed.items() if k in self.audit_done
        ]

    async def stop(self) -> None:
        if self.writer_process:
            await self._to_child("stop")
            await self.child.wait()
        else:
            await self.writer.stop()
        await self.host.stop()


async def writer_child(url: str, data: Path, db_template: str | None) -> None:
    """``pipeline.py --writer URL DIR DB``: the writer, driven by lines on stdin, answering JSON."""
    sys.setswitchinterval(Settings().gil_switch_interval_s)  # as a service host does
    writer = Writer(url, data, db_template)
    await writer.start()
    tune_gc(Settings().gc_gen0_threshold)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(doc: Any) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    answer("ready")
    while line := (await reader.readline()).decode().split():
        if line[0] == "run":
            await writer.run_commands(int(line[1]), int(line[2]))
            answer("done")
        elif line[0] == "paced":
            answer(await writer.paced(int(line[1]), float(line[2])))
        else:
            break
    await writer.stop()


async def measure(url: str, data: Path, args: argparse.Namespace, child: bool) -> dict[str, Any]:
    template, drop = None, None
    if args.postgres:
        template, drop = await pg_databases(args.postgres, ["producer", "sink", "audit"])
    path = MailroomPath(url, data, writer_process=child, db_template=template)
    try:
        await path.start()
        try:
            await path.throughput(min(2000, args.events), args.concurrency)  # warm-up
            e2e = await path.throughput(args.events, args.concurrency)
            lat = await path.latency(args.rate, args.seconds)
        finally:
            await path.stop()
    finally:
        if drop is not None:
            await drop()
    return {
        "e2e": e2e, "p50": pct(lat, 0.50), "p99": pct(lat, 0.99), "samples": len(lat),
        "loop_cpu_us": path.loop_cpu_us,
    }  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            raw = await raw_baseline(server.url, args.events)
            for mode, child in (("one_process", False), ("writer_process", True)):
                print(f"measuring: {mode}", file=sys.stderr, flush=True)
                data = Path(tmp) / mode
                data.mkdir()
                results[mode] = await measure(server.url, data, args, child)
        finally:
            server.stop()
    one, two = results["one_process"], results["writer_process"]
    return {
        "raw_events_per_s": round(raw, 1),
        "mailroom_e2e_events_per_s": round(one["e2e"], 1),
        "ratio": round(one["e2e"] / raw, 3),
        "commit_to_audit_p50_ms": round(one["p50"], 2),
        "commit_to_audit_p99_ms": round(one["p99"], 2),
        "loop_cpu_us_per_event": round(one["loop_cpu_us"], 1),
        "writer_process_e2e_events_per_s": round(two["e2e"], 1),
        "writer_process_ratio": round(two["e2e"] / raw, 3),
        "writer_process_commit_to_audit_p50_ms": round(two["p50"], 2),
        "writer_process_commit_to_audit_p99_ms": round(two["p99"], 2),
        "database": "postgresql" if args.postgres else "sqlite",
        "latency_rate_per_s": args.rate,
        "latency_samples": one["samples"],
        "events": args.events,
        "concurrency": args.concurrency,
    }


def table(r: dict[str, Any]) -> str:
    rate = r["latency_rate_per_s"]
    rows = [
        ("event loop (both paths)", str(r.get("loop", "asyncio"))),
        ("services' databases", str(r["database"])),
        ("raw JetStream publish+fetch/ack", f"{r['raw_events_per_s']:,.0f} events/s"),
    ]
    for label, p in (("one process", ""), ("writer in its own process", "writer_process_")):
        rows += [
            (
                f"Mailroom store->relay->JetStream->projection+audit, {label}",
                f"{r[p + 'mailroom_e2e_events_per_s' if not p else p + 'e2e_events_per_s']:,.0f}"
                " events/s",
            ),
            (f"  ratio Mailroom / raw, {label}", f"{r[p + 'ratio']:.3f}"),
            (f"  commit->audit p50 at {rate}/s", f"{r[p + 'commit_to_audit_p50_ms']:.1f} ms"),
            (f"  commit->audit p99 at {rate}/s", f"{r[p + 'commit_to_audit_p99_ms']:.1f} ms"),
        ]
        if not p:
            rows.append(("  event loop thread CPU per event", f"{r['loop_cpu_us_per_event']} us"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{'measure':<{width}}  value", "-" * (width + 20)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio"],
        default="auto",
        help="auto: what `mailroom up` runs on (uvloop when installed)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="every service on its own fresh PostgreSQL database (created next to URL's)",
    )
    parser.add_argument("--writer", nargs=3, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.writer:
        template = None if ns.writer[2] == "-" else ns.writer[2]
        run_on_service_loop(writer_child(ns.writer[0], Path(ns.writer[1]), template), ns.loop)
        sys.exit(0)
    result = run_on_service_loop(main(ns), ns.loop)
    result["loop"] = loop_in_use(ns.loop)
    print(table(result))
    if ns.json:
        print(json.dumps(result))
