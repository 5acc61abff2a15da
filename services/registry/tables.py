"""The registry's tables: read tables (projection), encrypted credentials, idempotency keys,
the organisation's mail settings.

The projection tables are updated in the same transaction as the events (``Database(projector=
...)``), so they are never behind the event store. ``credential_blobs`` is the only place a
secret is stored (sealed); deleting a row crypto-shreds the credential.
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
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("address", String(320), nullable=False),
    Column("address_key", String(320), nullable=False),
    Column("display_name", String(255), nullable=False, default=""),
    Column("protocol", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("ownership", String(16), nullable=False),
    Column("owner_id", String(64)),
    Column("preset_id", String(64)),
    Column("settings", Text, nullable=False),
    Column("has_credential", Boolean, nullable=False, default=False),
    Column("credential_blob_id", String(64)),
    Column("credential_field", String(32)),
    Column("credential_version", Integer),
    Column("kek_version", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_leased_at", DateTime(timezone=True)),
    Column("version", Integer, nullable=False),
    UniqueConstraint("tenant_id", "address_key", name="uq_accounts_tenant_address"),
    Index("ix_accounts_tenant_owner", "tenant_id", "owner_id"),
)

employees = Table(
    "employees",
    metadata,
    Column("employee_id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("name", String(255), nullable=False),
    Column("email", String(320), nullable=False),
    Column("email_key", String(320), nullable=False),
    Column("title", String(255), nullable=False, default=""),
    Column("department", String(255)),
    Column("department_key", String(255)),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("tenant_id", "email_key", name="uq_employees_tenant_email"),
    Index("ix_employees_tenant_department", "tenant_id", "department_key"),
)

departments = Table(
    "departments",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    Column("member_count", Integer, nullable=False),
    PrimaryKeyConstraint("tenant_id", "key", name="pk_departments"),
)

credential_blobs = Table(
    "credential_blobs",
    metadata,
    Column("blob_id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("field", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("kek_version", Integer, nullable=False, index=True),
    Column("blob", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant_id", "account_id", name="uq_blobs_account"),  # one per account
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "key", name="pk_idempotency_keys"),
)

org_settings = Table(
    "org_settings",
    metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("settings", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Signatures (read tables of SignatureSet/SignatureRemoved and the personal ones): sanitised
# HTML and its derived text, as the events carry them.
signatures = Table(
    "signatures",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", Text, nullable=False),
    PrimaryKeyConstraint("tenant_id", "account_id", "name", name="pk_signatures"),
)

personal_signatures = Table(
    "personal_signatures",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("employee_id", String(64), nullable=False),
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", Text, nullable=False),
    PrimaryKeyConstraint("tenant_id", "employee_id", name="pk_personal_signatures"),
)

# OAuth2 authorization requests in flight (``/v1/oauth/{provider}/start`` -> callback): single
# use, short-lived; the state itself is stored hashed and the PKCE verifier sealed.
oauth_states = Table(
    "oauth_states",
    metadata,
    Column("tenant_id", String(64), nullable=False),
    Column("state_hash", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("provider", String(40), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("binding_hash", String(64), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("verifier", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("tenant_id", "state_hash", name="pk_oauth_states"),
)
