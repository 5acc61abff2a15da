"""change log: recorded_at, so old changes can be pruned

Revision ID: authz_0002
Revises: authz_0001
Create Date: 2026-11-23 04:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "authz_0002"
down_revision: str | None = "authz_0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Rows recorded before this revision keep NULL: the pruner treats them as old.
    with op.batch_alter_table("authz_changes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recorded_at", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_authz_changes_recorded", ["recorded_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("authz_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_authz_changes_recorded")
        batch_op.drop_column("recorded_at")
