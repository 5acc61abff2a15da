"""A service's database: engine, schema and the unit of work of the write path.

One :class:`Tx` is one transaction: the events a command decided, the projection update and the
outbox rows commit together, or none of them do. After commit the outbox relay is woken at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from libs.common.events.envelope import Envelope
from libs.common.store.eventstore import EventStore
from libs.common.store.tables import StoreTables, store_tables


class Projector(Protocol):
    """Applies events to a projection inside the caller's transaction."""

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope]) -> None: ...


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, poolclass=NullPool if ":memory:" in url else None)
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
        self._on_commit: list[Callable[[], None]] = []

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
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self.write() as conn:
            tx = Tx(conn, self)
            yield tx
        if tx.appended:
            for callback in self._on_commit:
                callback()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def run(self, fn: Callable[[Tx], Awaitable[Any]]) -> Any:
        async with self.transaction() as tx:
            return await fn(tx)

    async def dispose(self) -> None:
        await self.engine.dispose()
