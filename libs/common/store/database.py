"""A service's database: engine, schema and the unit of work of the write path.

One :class:`Tx` is one transaction: the events a command decided, the projection update and the
outbox rows commit together, or none of them do. After commit the outbox relay is woken at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import MetaData, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from libs.common.events.envelope import Envelope
from libs.common.store import inline_sqlite
from libs.common.store.eventstore import ConcurrencyError, EventStore
from libs.common.store.tables import StoreTables, store_tables
from libs.common.telemetry import span


class Projector(Protocol):
    """Applies events to a projection inside the caller's transaction."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None: ...


def make_engine(url: str, *, inline: bool = False) -> AsyncEngine:
    if url.startswith("sqlite"):
        # Connections end every transaction themselves (commit, or rollback on close), so the
        # pool's extra rollback on return is only one more thread hop in aiosqlite.
        extra: dict[str, Any] = {}
        if inline and ":memory:" not in url:
            extra["async_creator"] = inline_sqlite.creator(make_url(url).database or "")
        engine = create_async_engine(
            url,
            poolclass=NullPool if ":memory:" in url else None,
            pool_reset_on_return=None,
            **extra,
        )
        _sqlite_pragmas(engine.sync_engine)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # WAL: readers never block the writer. synchronous=NORMAL in WAL mode loses nothing on a
        # process crash (kill -9); only an OS crash may lose the last commits (README, Guarantees).
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A write transaction takes the write lock up front, so two transactions that read
        # then write never deadlock; readers use a plain (deferred) snapshot.
        write = conn.get_execution_options().get(WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


WRITE_OPTION = "mailroom_write"


@dataclass
class _Pending:
    events: list[Envelope]
    expected_version: int | None
    future: asyncio.Future[None]


def _self_checked(p: _Pending) -> bool:
    """True when UNIQUE(aggregate_id, aggregate_version) alone proves the command's check:
    one aggregate, contiguous versions that start right after the expected version (or at 1)."""
    evs = p.events
    if not evs or any(e.aggregate_id != evs[0].aggregate_id for e in evs):
        return False
    first = evs[0].aggregate_version
    if any(e.aggregate_version != first + i for i, e in enumerate(evs)):
        return False
    if p.expected_version is None:
        return first == 1
    return first == p.expected_version + 1


class Tx:
    """One transaction of the write path."""

    def __init__(self, conn: AsyncConnection, db: Database) -> None:
        self.conn = conn
        self._db = db
        self.appended: list[Envelope] = []

    async def append(
        self, events: Sequence[Envelope], *, expected_version: int | None = None
    ) -> None:
        """Store events (optimistic concurrency), queue them in the outbox, update projection."""
        if not events:
            return
        await self._db.store.append(self.conn, events, expected_version=expected_version)
        if self._db.projector is not None:
            await self._db.projector.apply(self.conn, events)
        self.appended.extend(events)

    async def load(self, tenant_id: str, aggregate_id: str) -> list[Envelope]:
        return await self._db.store.load(self.conn, tenant_id, aggregate_id)


class Database:
    def __init__(
        self,
        url: str,
        metadata: MetaData | None = None,
        *,
        projector: Projector | None = None,
    ) -> None:
        self.url = url
        self.metadata = metadata if metadata is not None else MetaData()
        self.tables: StoreTables = store_tables(self.metadata)
        self.store = EventStore(self.tables)
        self.projector = projector
        self.engine = make_engine(url)
        # SQLite writes run on the loop's thread (store/inline_sqlite.py); reads, which may scan
        # much, keep aiosqlite's worker thread. PostgreSQL has one (truly async) engine.
        inline = url.startswith("sqlite") and ":memory:" not in url
        self._write_engine = make_engine(url, inline=True) if inline else self.engine
        self._on_commit: list[Callable[[], None]] = []
        # SQLite has one writer at a time; queueing writers here is far cheaper than letting
        # them spin in SQLite's busy handler (which sleeps in steps of up to 100 ms).
        self._commit_lock = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if url.startswith("sqlite") else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._on_commit.append(callback)

    async def create_all(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)

    async def drop_all(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.metadata.drop_all)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction (committed on exit, rolled back on error)."""
        if self._write_lock is not None:
            async with self._write_lock, self._write_conn() as conn:
                yield conn
        else:
            async with self._write_conn() as conn:
                yield conn

    @asynccontextmanager
    async def _write_conn(self) -> AsyncIterator[AsyncConnection]:
        async with self._write_engine.connect() as conn:
            conn = await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        with span("event_store transaction", {"db.system.name": self.dialect}) as s:
            async with self.write() as conn:
                tx = Tx(conn, self)
                yield tx
            if s is not None:
                s.set_attribute("mailroom.events", len(tx.appended))
        if tx.appended:
            for callback in self._on_commit:
                callback()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def commit(
        self, events: Sequence[Envelope], *, expected_version: int | None = None
    ) -> None:
        """Append a command's events through group commit; raise ConcurrencyError on a race.

        Commands that commit at the same moment share one transaction: the first caller to get
        the commit lock takes every pending command, checks each against the versions read in
        one query, and writes all their events, projection rows and outbox rows with a handful
        of statements. If the shared transaction fails (a projection refuses one command's
        events, say), each command is committed alone, so one cannot fail another.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(list(events), expected_version, loop.create_future())
        self._pending.append(pending)
        attrs = {"db.system.name": self.dialect, "mailroom.events": len(pending.events)}
        with span("event_store commit", attrs):
            async with self._commit_lock:
                if not pending.future.done():
                    batch, self._pending = self._pending, []
                    await self._commit_batch(batch)
            pending.future.result()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        accepted: list[_Pending] = []
        try:
            async with self.write() as conn:
                # Versions are read only for commands that cannot be checked without them:
                # a command that continues from the version it loaded (or creates version 1)
                # is guarded by UNIQUE(aggregate_id, aggregate_version) — a lost race fails
                # the insert, and the one-by-one retry below names the conflict precisely.
                unsure = sorted(
                    {e.aggregate_id for p in batch if not _self_checked(p) for e in p.events}
                )
                versions = await self.store.versions(conn, unsure) if unsure else {}
                seen: set[tuple[str, int]] = set()
                for p in batch:
                    keys = {(e.aggregate_id, e.aggregate_version) for e in p.events}
                    try:
                        if not _self_checked(p):
                            self.store.check(p.events, versions, p.expected_version)
                        elif keys & seen:  # two commands of this batch race each other
                            raise ConcurrencyError(p.events[0].aggregate_id, None, None)
                    except (ConcurrencyError, ValueError) as exc:
                        p.future.set_exception(exc)
                        continue
                    seen |= keys
                    accepted.append(p)
                all_events = [e for p in accepted for e in p.events]
                if all_events:
                    await self.store.insert(conn, all_events)
                    if self.projector is not None:
                        await self.projector.apply(conn, all_events)
        except Exception:
            for p in accepted:  # one by one: each gets its own outcome
                try:
                    async with self.transaction() as tx:
                        await tx.append(p.events, expected_version=p.expected_version)
                except Exception as exc:
                    p.future.set_exception(exc)
                else:
                    p.future.set_result(None)
            return
        for p in accepted:
            p.future.set_result(None)
        if accepted:
            for callback in self._on_commit:
                callback()

    async def load(self, tenant_id: str, aggregate_id: str) -> list[Envelope]:
        async with self.read() as conn:
            return await self.store.load(conn, tenant_id, aggregate_id)

    async def run(self, fn: Callable[[Tx], Awaitable[Any]]) -> Any:
        async with self.transaction() as tx:
            return await fn(tx)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._write_engine is not self.engine:
            await self._write_engine.dispose()
