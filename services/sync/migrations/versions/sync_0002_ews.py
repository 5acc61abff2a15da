"""EWS folders: folder id and SyncFolderItems state per account and folder

Revision ID: sync_0002_ews
Revises: sync_0001
Create Date: 2026-11-22 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "sync_0002_ews"
down_revision: str | None = "sync_0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "sync_ews_folders",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("folder", sa.String(length=255), nullable=False),
        sa.Column("folder_id", sa.String(length=512), nullable=True),
        sa.Column("sync_state", sa.Text(), nullable=True),
        sa.Column("baseline_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "account_id", "folder", name="pk_sync_ews_folders"),
    )


def downgrade() -> None:
    op.drop_table("sync_ews_folders")
