"""the autoresponder: per mailbox settings, whom it answered when, replies waiting to be sent

Revision ID: sender_0003_autoreply
Revises: sender_0002_signatures
Create Date: 2026-11-22 05:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "sender_0003_autoreply"
down_revision: str | None = "sender_0002_signatures"
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sender_autoreplies",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=True),
        sa.Column("subject", sa.String(length=998), nullable=True),
        sa.Column("starts_at", TS, nullable=True),
        sa.Column("ends_at", TS, nullable=True),
        sa.Column("interval_days", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("employee_id", sa.String(length=64), nullable=True),
        sa.Column("set_at", TS, nullable=False),
        sa.Column("set_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "mailbox_id"),
    )
    op.create_table(
        "sender_autoreply_replies",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("correspondent", sa.String(length=320), nullable=False),
        sa.Column("replied_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "mailbox_id", "correspondent"),
    )
    op.create_table(
        "sender_autoreply_pending",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("correlation_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "mailbox_id", "idempotency_key"),
    )
    op.create_index(
        "ix_sender_autoreply_pending_due", "sender_autoreply_pending", ["next_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_sender_autoreply_pending_due", table_name="sender_autoreply_pending")
    op.drop_table("sender_autoreply_pending")
    op.drop_table("sender_autoreply_replies")
    op.drop_table("sender_autoreplies")
