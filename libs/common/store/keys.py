"""Rows by a list of keys that stay one index probe per key on PostgreSQL.

PostgreSQL plans ``tenant_id = $1 AND key IN ($2, …)`` (or ``= ANY``, or a join to
``unnest``) from its statistics. On a table autovacuum has not analysed yet — fresh, or grown
fast: a bulk import, a consumer's inbox — it underestimates the rows of the leading column, reads
the index by it alone and filters every row of the tenant: O(table) per statement, quadratic over
an import (re-importing 30,000 rows spent 17 s in PostgreSQL; a consumer fell from 2,900 to 1,300
events/s within 40,000 events). Here each key is looked up in a ``LATERAL`` subquery with
``LIMIT 1`` (the limit keeps the planner from flattening it into a hash join): a nested loop of
index probes whatever the statistics say. Only for keys that are unique within the scope.
SQLite keeps the plain ``IN`` list (its planner probes the index per value).

asyncpg prepares every statement, and PostgreSQL may keep one *generic* plan for it, costed when
it was made: a look-up first planned while its table was nearly empty stays a sequential scan as
the table grows (the first import of 30,000 rows: 13 s → 41 s with such a plan).
:func:`plan_each_time` makes the rest of the transaction plan each statement for the table as it
is; doing so for every statement of the service cost the event pipeline a quarter of its
throughput, so only transactions that look up by keys use it (a consumer batch, an import).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, String, Table, bindparam, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement


async def plan_each_time(conn: AsyncConnection) -> None:
    """PostgreSQL: plan each statement of this transaction anew (no cached generic plan)."""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")


def select_by_keys(
    table: Table,
    key: ColumnElement[str],
    keys: Sequence[str],
    *scope: ColumnElement[bool],
    dialect: str,
) -> Select[Any]:
    """``SELECT * FROM table WHERE <scope> AND key IN (keys)``; ``(scope, key)`` unique."""
    if dialect != "postgresql":
        return select(table).where(*scope, key.in_(list(keys)))
    wanted = (
        func.unnest(bindparam(None, list(keys), type_=ARRAY(String())))
        .table_valued("k")
        .render_derived(name="wanted")
    )
    one = select(table).where(*scope, key == wanted.c.k).limit(1).lateral("one")
    return select(one).select_from(wanted).join(one, true())
