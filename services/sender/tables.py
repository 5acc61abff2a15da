"""The sender's tables: mailboxes and employees (projected from registry events) and sends.

``sender_sends`` is the durable send queue and the idempotency record at once: one row per
(tenant, mailbox, Idempotency-Key), written *before* delivery, holding the exact message bytes
so every attempt delivers the same message, and the outcome once known. It is not a projection
of events; the outcome events (MessageSent, SendFailed) commit in the transaction that records
the outcome on the row.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()
TS = DateTime(timezone=True)

mailboxes = Table(
    "sender_mailboxes",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("mailbox_id", String(64), primary_key=True),
    Column("address", String(320), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("owner_id", String(64), nullable=True),
    Column("status", String(16), nullable=False),  # active | disabled | deleted
    Column("settings", Text, nullable=False),  # AccountSettings as JSON
    Column("version", Integer, nullable=False),
    Column("ownership", String(16), nullable=False, server_default="personal"),
    # Offboarding: the leaver whose personal mailbox this is; sending refused until reinstated
    # or handed over (services/sender/README.md, "Offboarding").
    Column("sending_stopped_by", String(64), nullable=True),
)

employees = Table(
    "sender_employees",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("employee_id", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("email", String(320), nullable=False),
    Column("offboarded", Boolean, nullable=False, default=False),
    Column("title", String(255), nullable=False, server_default=""),  # signature placeholders
    Column("department", String(255), nullable=True),
)

sends = Table(
    "sender_sends",
    metadata,
    Column("send_id", String(36), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("mailbox_id", String(64), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("correlation_id", String(64), nullable=False),
    Column("on_behalf_of", String(64), nullable=True),
    # queued | delivering | sent | failed
    Column("state", String(16), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("mail_from", String(320), nullable=False),
    Column("recipients", Text, nullable=False),  # JSON list: the SMTP envelope
    Column("bcc", Text, nullable=False),  # JSON list: shown only in the Sent copy
    Column("raw", LargeBinary, nullable=True),  # dropped once nothing needs it any more
    Column("size", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", TS, nullable=False),
    Column("claim_token", String(36), nullable=True),
    Column("claimed_until", TS, nullable=True),
    Column("reason_class", String(32), nullable=True),
    Column("detail", Text, nullable=False, default=""),
    Column("refused", Text, nullable=False, default="[]"),
    Column("created_at", TS, nullable=False),
    Column("finished_at", TS, nullable=True),
    # Sent copy by IMAP APPEND: none | wanted (once sent) | pending | saving | saved | failed
    Column("copy_state", String(16), nullable=False, default="none"),
    Column("copy_attempts", Integer, nullable=False, default=0),
    Column("copy_next_at", TS, nullable=True),
    Column("copy_token", String(36), nullable=True),
    Column("copy_claimed_until", TS, nullable=True),
    Column("copy_detail", Text, nullable=False, default=""),
    UniqueConstraint("tenant_id", "mailbox_id", "idempotency_key", name="uq_sender_idem"),
    Index("ix_sender_sends_window", "tenant_id", "mailbox_id", "created_at"),
    Index("ix_sender_sends_due", "state", "next_attempt_at"),
    Index("ix_sender_sends_copy", "copy_state", "copy_next_at"),
)

# --- the autoresponder (services/sender/autoreply*.py) -----------------------------------------
autoreplies = Table(
    "sender_autoreplies",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("mailbox_id", String(64), primary_key=True),
    Column("text", Text, nullable=False),
    Column("html", Text, nullable=True),
    Column("subject", String(998), nullable=True),
    Column("starts_at", TS, nullable=True),
    Column("ends_at", TS, nullable=True),
    Column("interval_days", Integer, nullable=False),
    Column("source", String(16), nullable=False),  # api | offboarding
    Column("employee_id", String(64), nullable=True),  # offboarding: the leaver
    Column("set_at", TS, nullable=False),
    Column("set_by", String(128), nullable=False),
)

autoreply_replies = Table(
    "sender_autoreply_replies",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("mailbox_id", String(64), primary_key=True),
    Column("correspondent", String(320), primary_key=True),  # lower case
    Column("replied_at", TS, nullable=False),
)

autoreply_pending = Table(
    "sender_autoreply_pending",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("mailbox_id", String(64), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("message", Text, nullable=False),  # MessageIn as JSON
    Column("correlation_id", String(64), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("next_at", TS, nullable=False),  # due, or claimed by a replica until then
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_sender_autoreply_pending_due", "next_at"),
)

# --- signatures (services/sender/signatures.py), from registry events -------------------------
signatures = Table(
    "sender_signatures",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("mailbox_id", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),  # default | an alternate
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
)

personal_signatures = Table(
    "sender_personal_signatures",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("employee_id", String(64), primary_key=True),
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
)
