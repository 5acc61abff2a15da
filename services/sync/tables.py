"""The sync service's tables (besides events, outbox and inbox).

* ``sync_accounts``: accounts to watch, projected from registry events.
* ``sync_status``: each watched account's health (one row; gone when the account is deleted).
* ``sync_history``: its status changes, newest last.
* ``sync_folders``: per folder: UIDVALIDITY, UIDNEXT, the highest UID processed, counts.
* ``sync_messages``: the UIDs known per folder and UIDVALIDITY — the de-duplication key of
  ``MessageReceived`` (unique) and the reference for vanished mail. POP3 rows carry the UIDL.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from libs.common.store.tables import SeqType

metadata = MetaData()

accounts = Table(
    "sync_accounts",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("address", String(320), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("settings", Text, nullable=False),  # AccountSettings as JSON (no secret in it)
    Column("enabled", Boolean, nullable=False),
    Column("credential_version", Integer, nullable=False, default=0),
    Column("added_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "account_id", name="pk_sync_accounts"),
)

status = Table(
    "sync_status",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("failures", Integer, nullable=False, default=0),
    Column("failure_class", String(16)),
    Column("last_error", String(500)),
    Column("down_since", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
    Column("next_sync_at", DateTime(timezone=True)),
    Column("last_mail_at", DateTime(timezone=True)),
    Column("silence_reported", Boolean, nullable=False, default=False),
    Column("message_count", Integer),
    Column("quota_used_kb", Integer),
    Column("quota_limit_kb", Integer),
    Column("quota_at", DateTime(timezone=True)),
    Column("idle", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("tenant_id", "account_id", name="pk_sync_status"),
)
Index("ix_sync_status_state", status.c.tenant_id, status.c.state)

history = Table(
    "sync_history",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),
    Column("previous", String(16)),
    Column("detail", String(500), nullable=False, default=""),
)
Index("ix_sync_history_account", history.c.tenant_id, history.c.account_id, history.c.seq)

folders = Table(
    "sync_folders",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("folder", String(255), nullable=False),
    Column("uidvalidity", SeqType, nullable=False),
    Column("uidnext", SeqType),
    Column("last_uid", SeqType, nullable=False, default=0),
    Column("exists", Integer, nullable=False, default=0),
    Column("known", Integer, nullable=False, default=0),
    Column("last_synced_at", DateTime(timezone=True), nullable=False),
    Column("poll_seconds", Float),
    PrimaryKeyConstraint("tenant_id", "account_id", "folder", name="pk_sync_folders"),
)

messages = Table(
    "sync_messages",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("folder", String(255), nullable=False),
    Column("uidvalidity", SeqType, nullable=False),
    Column("uid", SeqType, nullable=False),
    Column("uidl", String(255)),
    Column("hub_deleted", Boolean, nullable=False, default=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(
        "account_id", "folder", "uidvalidity", "uid", name="uq_sync_messages_account_uid"
    ),
)
Index("ix_sync_messages_uidl", messages.c.account_id, messages.c.uidl)
