"""page indexes: one tenant's trail by position (pages in either order), and one mailbox's
(tenant, aggregate, position) — so ``order=desc`` and cursor pages are index range scans
instead of walking every tenant's entries.

``if_not_exists``: a database made by ``create_all`` before Alembic (stamped audit_0001 when
adopted) may already have them.

Revision ID: audit_0002_page_indexes
Revises: audit_0001
Create Date: 2026-11-22 07:05:33.266769
"""

from __future__ import annotations

from alembic import op

revision: str = "audit_0002_page_indexes"
down_revision: str | None = "audit_0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_entries_tenant_position",
        "audit_entries",
        ["tenant_id", "position"],
        unique=False,
        if_not_exists=True,
    )
    op.create_index(
        "ix_audit_entries_tenant_aggregate",
        "audit_entries",
        ["tenant_id", "aggregate_id", "position"],
        unique=False,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_audit_entries_tenant_aggregate", table_name="audit_entries")
    op.drop_index("ix_audit_entries_tenant_position", table_name="audit_entries")
