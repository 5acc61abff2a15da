"""The three tables every service database has: events, outbox and inbox (tracking)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SeqType = BigInteger().with_variant(Integer(), "sqlite")


@dataclass(frozen=True)
class StoreTables:
    metadata: MetaData
    events: Table
    outbox: Table
    inbox: Table


def store_tables(metadata: MetaData) -> StoreTables:
    if "events" in metadata.tables:  # a service's metadata is defined once per process
        t = metadata.tables
        return StoreTables(metadata, t["events"], t["outbox"], t["inbox"])
    events = Table(
        "events",
        metadata,
        Column("seq", SeqType, primary_key=True, autoincrement=True),
        Column("id", String(36), nullable=False, unique=True),
        Column("tenant_id", String(64), nullable=False, index=True),
        Column("aggregate_type", String(32), nullable=False),
        Column("aggregate_id", String(64), nullable=False),
        Column("aggregate_version", Integer, nullable=False),
        Column("type", String(128), nullable=False),
        Column("time", DateTime(timezone=True), nullable=False),
        Column("envelope", Text, nullable=False),
        UniqueConstraint("aggregate_id", "aggregate_version", name="uq_events_aggregate_version"),
    )
    outbox = Table(
        "outbox",
        metadata,
        Column("seq", SeqType, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False),
        Column("subject", String(255), nullable=False),
        Column("headers", Text, nullable=False),
        Column("body", LargeBinary, nullable=False),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("consumer", String(64), nullable=False),
        Column("event_id", String(36), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
    )
    return StoreTables(metadata, events, outbox, inbox)
