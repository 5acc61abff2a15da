"""The audit service's tables: append-only entries and the head of each tenant's chain."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from libs.common.store.tables import SeqType

metadata = MetaData()

entries = Table(
    "audit_entries",
    metadata,
    Column("position", SeqType, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("tenant_seq", Integer, nullable=False),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("type", String(128), nullable=False),
    Column("aggregate_type", String(32), nullable=False),
    Column("aggregate_id", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("correlation_id", String(64), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("canonical", LargeBinary, nullable=False),
    Column("entry_hash", LargeBinary(32), nullable=False),
    Column("chain_hash", LargeBinary(32), nullable=False),
    UniqueConstraint("tenant_id", "tenant_seq", name="uq_audit_tenant_seq"),
    # pages of one tenant's trail, either order; and of one mailbox's (audit_0002)
    Index("ix_audit_entries_tenant_position", "tenant_id", "position"),
    Index("ix_audit_entries_tenant_aggregate", "tenant_id", "aggregate_id", "position"),
)

heads = Table(
    "audit_heads",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("tenant_seq", Integer, nullable=False),
    Column("chain_hash", LargeBinary(32), nullable=False),
)

# No UPDATE or DELETE reaches audit_entries: the code has no such path and the database refuses.
APPEND_ONLY_SQLITE = [
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_entries
       BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_entries
       BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END""",
]
APPEND_ONLY_POSTGRES = [
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'audit entries are append-only'; END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS audit_no_change ON audit_entries",
    """CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit_entries
       FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
]
