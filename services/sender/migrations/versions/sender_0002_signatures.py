"""signatures and offboarding: mailbox and personal signatures, employee title and
department (placeholders), mailbox ownership and the offboarding stop

Revision ID: sender_0002_signatures
Revises: sender_0001
Create Date: 2026-11-22 04:00:00.000000

Rows projected before this revision get ``ownership = personal`` and an empty title; rebuild
the sender's projection (``mailroom projections rebuild sender``) to fill them from events.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "sender_0002_signatures"
down_revision: str | None = "sender_0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("sender_mailboxes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ownership", sa.String(length=16), server_default="personal", nullable=False)
        )
        batch_op.add_column(sa.Column("sending_stopped_by", sa.String(length=64), nullable=True))
    with op.batch_alter_table("sender_employees", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("title", sa.String(length=255), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("department", sa.String(length=255), nullable=True))
    op.create_table(
        "sender_signatures",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "mailbox_id", "name"),
    )
    op.create_table(
        "sender_personal_signatures",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("employee_id", sa.String(length=64), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "employee_id"),
    )


def downgrade() -> None:
    op.drop_table("sender_personal_signatures")
    op.drop_table("sender_signatures")
    with op.batch_alter_table("sender_employees", schema=None) as batch_op:
        batch_op.drop_column("department")
        batch_op.drop_column("title")
    with op.batch_alter_table("sender_mailboxes", schema=None) as batch_op:
        batch_op.drop_column("sending_stopped_by")
        batch_op.drop_column("ownership")
