"""The authz service's tables: the projection, its per-tenant revision and change log.

``authz_tenants.revision`` is the tenant's authz revision: it grows by one, in the same
transaction, with every event the projection applies (authz's own grants, revocations and
expiries, and the registry events that matter to access). ``authz_changes`` keeps each of those
events under its revision, so that any replica's in-memory index can follow the projection
(and the projection can be rebuilt) in exactly the same order. Changes older than the retention
(``MAILROOM_AUTHZ_CHANGE_RETENTION_S``, by ``recorded_at``) are pruned, the newest of each
tenant excepted; an index that finds a gap reloads its tenant from the projection tables.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

tenants = Table(
    "authz_tenants",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("revision", Integer, nullable=False),
)

changes = Table(
    "authz_changes",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("type", String(128), nullable=False),
    Column("envelope", Text, nullable=False),
    # When the change was applied (fixed-width UTC text); NULL for rows from before authz_0002.
    Column("recorded_at", String(32), nullable=True),
    Index("ix_authz_changes_recorded", "recorded_at"),
)

mailboxes = Table(
    "authz_mailboxes",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("mailbox_id", String(64), primary_key=True),
    Column("owner_id", String(64), nullable=True),
    Column("ownership", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Index("ix_authz_mailboxes_owner", "tenant_id", "owner_id"),
)

employees = Table(
    "authz_employees",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("employee_id", String(64), primary_key=True),
    Column("department", String(128), nullable=True),
    Column("offboarded", Boolean, nullable=False, default=False),
    Index("ix_authz_employees_department", "tenant_id", "department"),
)

grants = Table(
    "authz_grants",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("mailbox_id", String(64), primary_key=True),
    Column("grantee_kind", String(16), primary_key=True),
    Column("grantee_id", String(128), primary_key=True),
    Column("level", String(16), nullable=False),
    Column("on_behalf", Boolean, nullable=False, default=False),
    Column("expires_at", String(32), nullable=True),  # fixed-width UTC text (domain.fmt_time)
    Column("revision", Integer, nullable=False),
    Index("ix_authz_grants_grantee", "tenant_id", "grantee_kind", "grantee_id"),
    Index("ix_authz_grants_expiry", "tenant_id", "expires_at"),
)
