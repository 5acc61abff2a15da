"""Multi-row INSERTs of the write path without SQLAlchemy's per-row parameter processing.

``conn.execute(insert(table), rows)`` builds, for every row, a parameter dict through the
compiled statement and each column type's bind processor. For the few inserts that run per event
(events, outbox, inbox, audit entries) that was half of SQLAlchemy's share of the pipeline's
time (bench/pipeline.py). :func:`insert_rows` compiles the statement once per table, dialect and
column set, converts each row to a tuple in parameter order with the same bind processors —
except SQLite's DATETIME one, replaced by an equivalent that formats the same text faster — and
hands the tuples to the driver's ``executemany``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import DateTime, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Prepared:
    sql: str
    keys: tuple[str, ...]
    processors: tuple[Processor, ...]


_cache: dict[tuple[int, str, tuple[str, ...]], _Prepared] = {}


def sqlite_datetime(value: datetime | None) -> str | None:
    """What SQLAlchemy's SQLite DATETIME stores: ``YYYY-MM-DD HH:MM:SS.ffffff``, any zone
    dropped (not converted), as its default storage format does."""
    if value is None:
        return None
    last = _last[0]
    if last is not None and last[0] is value:  # a batch's rows share one timestamp object
        return last[1]
    text = value.replace(tzinfo=None).isoformat(" ", "microseconds")
    _last[0] = (value, text)
    return text


_last: list[tuple[datetime, str] | None] = [None]  # the last datetime formatted, its text


def _processor(table: Table, key: str, dialect: Dialect) -> Processor:
    col_type = table.c[key].type
    if dialect.name == "sqlite" and isinstance(col_type, DateTime):
        return sqlite_datetime
    return col_type._cached_bind_processor(dialect)


def _prepare(table: Table, keys: tuple[str, ...], dialect: Dialect) -> _Prepared:
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
    order = tuple(compiled.positiontup or ())
    if not compiled.positional or set(order) != set(keys):
        raise TypeError(f"{dialect.name}: no positional INSERT for {table.name}")
    return _Prepared(compiled.string, order, tuple(_processor(table, k, dialect) for k in order))


async def insert_rows(
    conn: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """INSERT ``rows`` (all with the same keys) in one ``executemany``."""
    if not rows:
        return
    dialect = conn.dialect
    keys = tuple(rows[0])
    cache_key = (id(table), dialect.name, keys)
    prepared = _cache.get(cache_key)
    if prepared is None:
        prepared = _cache[cache_key] = _prepare(table, keys, dialect)
    order = prepared.keys
    if len(order) == 1:
        key = order[0]
        values: list[list[Any]] = [[r[key]] for r in rows]
    else:
        get = itemgetter(*order)
        values = [list(get(r)) for r in rows]
    processing = [(i, p) for i, p in enumerate(prepared.processors) if p is not None]
    for row in values:
        for i, p in processing:
            row[i] = p(row[i])
    await conn.exec_driver_sql(prepared.sql, [tuple(v) for v in values])
