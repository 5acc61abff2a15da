"""SQLite for SQLAlchemy's asyncio engine without a thread hop per statement.

aiosqlite runs every call (cursor, execute, fetch, commit, close) on a worker thread and hands
the result back through the event loop: a transaction of a consumer batch is a dozen hand-offs,
each waiting for the GIL and for a turn of a busy loop. Profiling the event pipeline
(bench/pipeline.py) put a fifth of the process's time there and most of its commit→audit latency.

The write path's transactions are short (a command, a consumer batch: a few statements on a WAL
database whose commits do not fsync), so :class:`InlineConnection` runs them on the event loop's
thread directly — all but the commit, which may wait on the disk — behind the same interface
aiosqlite gives SQLAlchemy (its dialect
``sqlite+aiosqlite`` with ``async_creator``). Writers never wait on SQLite's lock inside the
loop: :class:`libs.common.store.database.Database` queues its writers on an asyncio lock first.
Reads that may scan much (audit export, verify) keep using aiosqlite's thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any


class InlineCursor:
    __slots__ = ("_cur",)

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cur.close()

    @property
    def description(self) -> Any:
        return self._cur.description

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cur.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cur.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cur.arraysize = value

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        if parameters is None:
            self._cur.execute(sql)
        else:
            self._cur.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        self._cur.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cur.fetchone()

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        return self._cur.fetchmany(size) if size is not None else self._cur.fetchmany()

    async def fetchall(self) -> Sequence[Any]:
        return self._cur.fetchall()

    async def close(self) -> None:
        self._cur.close()

    async def setinputsizes(self, *sizes: Any) -> None:
        return None

    async def nextset(self) -> None:
        return None


class _RunNow:
    """SQLAlchemy sets ``isolation_level`` by putting ``(future, fn)`` on aiosqlite's queue."""

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any], Any]) -> None:
        future, fn = item
        try:
            result = fn()
        except BaseException as exc:  # handed to the waiting caller, as aiosqlite does
            future.set_exception(exc)
        else:
            future.set_result(result)


class InlineConnection:
    """The parts of ``aiosqlite.Connection`` that SQLAlchemy's aiosqlite dialect uses."""

    _tx = _RunNow()

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        self._conn.isolation_level = value

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        # The one call that may wait on the disk (WAL writes, an automatic checkpoint's fsync):
        # a worker thread does it while the loop goes on; nothing else uses this connection
        # meanwhile (SQLAlchemy awaits the commit, other writers wait on the database's lock).
        await asyncio.to_thread(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:  # SQLAlchemy's forced terminate
        if self._connection is not None:
            self._connection = None
            self._conn.close()


def creator(path: str) -> Any:
    """An ``async_creator`` for ``create_async_engine("sqlite+aiosqlite://", ...)``."""

    async def connect() -> InlineConnection:
        # Opened and used on the event loop's thread only; SQLAlchemy's pool may hand the
        # connection to another task of the same loop, never to another thread.
        return InlineConnection(
            sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        )

    return connect
