"""oauth: authorization requests in flight (hashed state, sealed PKCE verifier)

Revision ID: registry_0003_oauth
Revises: registry_0002_signatures
Create Date: 2026-11-22 04:06:16.949442
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "registry_0003_oauth"
down_revision: str | None = "registry_0002_signatures"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "oauth_states",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("binding_hash", sa.String(length=64), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("verifier", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "state_hash", name="pk_oauth_states"),
    )


def downgrade() -> None:
    op.drop_table("oauth_states")
