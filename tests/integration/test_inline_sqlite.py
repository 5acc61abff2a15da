"""SQLite writes on the event loop's thread (libs/common/store/inline_sqlite.py), for real.

The write path's transactions run without a thread hop per statement; reads keep aiosqlite's
worker thread. Both see one database: what a write commits, a read sees; what a write rolls
back, nobody sees; constraint errors reach callers as SQLAlchemy's IntegrityError.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.exc import IntegrityError

from libs.common.store.database import Database
from libs.common.store.inline_sqlite import InlineConnection

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(20), nullable=False, unique=True),
)


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Database(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}", metadata)
    await d.create_all()
    yield d
    await d.dispose()


async def test_writes_run_on_the_loop_thread_and_reads_see_them(db: Database) -> None:
    async with db.write() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, InlineConnection)
        await conn.execute(insert(items), [{"name": "a"}, {"name": "b"}])
        mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        assert mode == "wal"
    async with db.read() as conn:
        names = (await conn.execute(select(items.c.name).order_by(items.c.id))).scalars().all()
    assert names == ["a", "b"]


async def test_a_failed_write_leaves_nothing_and_raises_integrity_error(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(insert(items), [{"name": "taken"}])
    with pytest.raises(IntegrityError):
        async with db.write() as conn:
            await conn.execute(insert(items), [{"name": "new"}])
            await conn.execute(insert(items), [{"name": "taken"}])
    with pytest.raises(RuntimeError):
        async with db.write() as conn:
            await conn.execute(insert(items), [{"name": "also new"}])
            raise RuntimeError("handler failed")
    async with db.read() as conn:
        names = (await conn.execute(select(items.c.name))).scalars().all()
    assert names == ["taken"]


async def test_concurrent_writers_queue_and_none_is_lost(db: Database) -> None:
    """Many tasks write at once (inline writers must never wait on SQLite's lock in the loop)."""

    async def writer(i: int) -> None:
        for j in range(20):
            async with db.write() as conn:
                await conn.execute(insert(items), [{"name": f"w{i}-{j}"}])
                await asyncio.sleep(0)  # another task's turn inside an open transaction

    loop_thread = threading.get_ident()
    await asyncio.gather(*(writer(i) for i in range(10)))
    assert threading.get_ident() == loop_thread
    async with db.read() as conn:
        count = len((await conn.execute(select(items.c.id))).all())
    assert count == 200


async def test_fast_inserts_store_what_sqlalchemy_stores(db: Database) -> None:
    """fastinsert.insert_rows writes the same bytes as ``conn.execute(insert(t), rows)``:
    DATETIME text included (aware and naive datetimes, microsecond 0, year < 1000)."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy import DateTime, LargeBinary, delete

    from libs.common.store.fastinsert import insert_rows

    md = MetaData()
    t = Table(
        "typed",
        md,
        Column("k", Integer, primary_key=True),
        Column("at", DateTime(timezone=True)),
        Column("blob", LargeBinary),
        Column("name", String(20)),
    )
    async with db.write() as conn:
        await conn.run_sync(md.create_all)
    stamps = [
        datetime(2026, 11, 22, 4, 5, 6, 123456, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        datetime(999, 1, 1),
        None,
    ]
    rows = [{"k": i, "at": s, "blob": b"\x00\xff", "name": f"n{i}"} for i, s in enumerate(stamps)]
    raw = "SELECT k, CAST(at AS TEXT), blob, name FROM typed ORDER BY k"
    async with db.write() as conn:
        await conn.execute(t.insert(), rows)
        by_sqlalchemy = (await conn.execute(text(raw))).all()
        await conn.execute(delete(t))
        await insert_rows(conn, t, rows)
        by_fast_path = (await conn.execute(text(raw))).all()
        back = (await conn.execute(select(t.c.at).order_by(t.c.k))).scalars().all()
    assert by_fast_path == by_sqlalchemy
    assert back[0] == stamps[0].replace(tzinfo=None)
