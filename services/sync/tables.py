"""The sync service's tables (besides events, outbox and inbox).

* ``sync_accounts``: accounts to watch, projected from registry events.
* ``sync_status``: each watched account's health (one row; gone when the account is deleted).
* ``sync_history``: its status changes, newest last.
* ``sync_folders``: per folder: UIDVALIDITY, UIDNEXT, the highest UID processed, counts.
* ``sync_messages``: the UIDs known per folder and UIDVALIDITY — the de-duplication key of
  ``MessageReceived`` (unique) and the reference for vanished mail. POP3 rows carry the UIDL,
  EWS rows the item's key (both with UIDVALIDITY 0 and UIDs sync assigns).
* ``sync_ews_folders``: per EWS account and folder, the folder id and the SyncFolderItems state.
* ``sync_alert_rules``, ``sync_alert_state``, ``sync_alert_deliveries``: alert rules (webhook
  secrets sealed), per rule+mailbox+kind incidents and throttling, and the durable queue of
  alert deliveries (services/sync/alerts_*.py).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
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

ews_folders = Table(
    "sync_ews_folders",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("folder", String(255), nullable=False),
    Column("folder_id", String(512)),
    Column("sync_state", Text),  # SyncFolderItems' opaque state: the changes already recorded
    # While a sync from scratch runs: items received before this are known, not announced.
    Column("baseline_before", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "account_id", "folder", name="pk_sync_ews_folders"),
)

alert_rules = Table(
    "sync_alert_rules",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("rule_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("spec", Text, nullable=False),  # the rule as JSON, without its webhook secret
    Column("webhook_secret", LargeBinary),  # sealed (services/sync/alerts_webhook.py)
    Column("secret_version", Integer, nullable=False, default=0),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "rule_id", name="pk_sync_alert_rules"),
    UniqueConstraint("tenant_id", "name", name="uq_sync_alert_rules_name"),
)

alert_state = Table(
    "sync_alert_state",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("rule_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("last_alert_at", DateTime(timezone=True)),
    Column("open", Boolean, nullable=False, default=False),
    Column("due_at", DateTime(timezone=True)),  # "offline" rules: when to check the outage
    PrimaryKeyConstraint("tenant_id", "rule_id", "account_id", "kind", name="pk_sync_alert_state"),
)
Index("ix_sync_alert_state_due", alert_state.c.due_at)

alert_deliveries = Table(
    "sync_alert_deliveries",
    metadata,
    Column("alert_id", String(64), nullable=False),
    Column("tenant_id", String(64), nullable=False),
    Column("rule_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("payload", Text, nullable=False),  # the alert as JSON (the webhook body)
    Column("state", String(16), nullable=False),  # pending, sent, dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_at", DateTime(timezone=True), nullable=False),
    Column("last_error", String(500)),
    Column("correlation_id", String(64)),
    Column("causation_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("alert_id", name="pk_sync_alert_deliveries"),
)
Index("ix_sync_alert_deliveries_due", alert_deliveries.c.state, alert_deliveries.c.next_at)
Index(
    "ix_sync_alert_deliveries_tenant",
    alert_deliveries.c.tenant_id,
    alert_deliveries.c.created_at,
)
