"""Appends every event of every service to its tenant's hash chain, exactly once."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.envelope import Envelope
from libs.common.store.fastinsert import insert_rows
from services.audit import domain
from services.audit.tables import entries, heads


async def append_to_chain(conn: AsyncConnection, events: Sequence[Envelope]) -> None:
    tenants = sorted({e.tenant_id for e in events})
    q = select(heads.c.tenant_id, heads.c.tenant_seq, heads.c.chain_hash).where(
        heads.c.tenant_id.in_(tenants)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()  # one chain head, even with several audit replicas
    known = {r.tenant_id: (r.tenant_seq, r.chain_hash) for r in await conn.execute(q)}
    state = dict(known)
    rows = []
    for e in events:
        seq, prev = state.get(e.tenant_id, (0, domain.GENESIS))
        canonical = e.canonical_json()
        eh = domain.entry_hash(canonical)
        ch = domain.chain_hash(prev, eh)
        state[e.tenant_id] = (seq + 1, ch)
        rows.append(
            {
                "tenant_id": e.tenant_id,
                "tenant_seq": seq + 1,
                "event_id": e.id,
                "type": e.type,
                "aggregate_type": e.aggregate,
                "aggregate_id": e.aggregate_id,
                "actor": e.actor,
                "correlation_id": e.correlation_id,
                "time": e.time,
                "canonical": canonical,
                "entry_hash": eh,
                "chain_hash": ch,
            }
        )
    await insert_rows(conn, entries, rows)
    for tenant, (seq, ch) in state.items():
        if tenant in known:
            await conn.execute(
                update(heads)
                .where(heads.c.tenant_id == tenant)
                .values(tenant_seq=seq, chain_hash=ch)
            )
        else:
            await conn.execute(
                insert(heads).values(tenant_id=tenant, tenant_seq=seq, chain_hash=ch)
            )
