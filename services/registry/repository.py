"""Every query of the registry, each scoped to one tenant.

The single exception is :func:`count_blobs_under_kek`, an operator-level count (no tenant data)
that guards retiring a deployment-wide KEK.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.events.registry import AccountSettings
from services.registry.domain_employees import department_key
from services.registry.tables import (
    accounts,
    credential_blobs,
    departments,
    employees,
    idempotency_keys,
)
from services.registry.validation import address_key


@dataclass(frozen=True, slots=True)
class AccountRow:
    id: str
    address: str
    display_name: str
    protocol: str
    status: str
    ownership: str
    owner_id: str | None
    preset_id: str | None
    settings: AccountSettings
    has_credential: bool
    credential_version: int | None
    kek_version: int | None
    credential_blob_id: str | None
    credential_field: str | None
    created_at: datetime
    updated_at: datetime
    last_leased_at: datetime | None
    version: int


@dataclass(frozen=True, slots=True)
class EmployeeRow:
    id: str
    name: str
    email: str
    title: str
    department: str | None
    status: str
    created_at: datetime
    updated_at: datetime
    version: int


@dataclass(frozen=True, slots=True)
class BlobRow:
    blob_id: str
    account_id: str
    field: str
    version: int
    kek_version: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class AccountFilter:
    status: str | None = None
    owner_id: str | None = None
    ownership: str | None = None
    protocol: str | None = None
    q: str | None = None


def _like(q: str) -> str:
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value  # SQLite: naive UTC


def _aware_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _aware(value)


def _account(r: Any) -> AccountRow:
    return AccountRow(
        id=r.account_id,
        address=r.address,
        display_name=r.display_name,
        protocol=r.protocol,
        status=r.status,
        ownership=r.ownership,
        owner_id=r.owner_id,
        preset_id=r.preset_id,
        settings=AccountSettings.model_validate_json(r.settings),
        has_credential=bool(r.has_credential),
        credential_version=r.credential_version,
        kek_version=r.kek_version,
        credential_blob_id=r.credential_blob_id,
        credential_field=r.credential_field,
        created_at=_aware(r.created_at),
        updated_at=_aware(r.updated_at),
        last_leased_at=_aware_or_none(r.last_leased_at),
        version=r.version,
    )


def _employee(r: Any) -> EmployeeRow:
    return EmployeeRow(
        id=r.employee_id,
        name=r.name,
        email=r.email,
        title=r.title,
        department=r.department,
        status=r.status,
        created_at=_aware(r.created_at),
        updated_at=_aware(r.updated_at),
        version=r.version,
    )


class RegistryRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    # --- accounts ---------------------------------------------------------------------------
    def _accounts(self) -> Select[Any]:
        return select(accounts).where(accounts.c.tenant_id == self.tenant_id)

    async def account(self, account_id: str, *, lock: bool = False) -> AccountRow | None:
        """The account's read row; ``lock`` holds it until commit (PostgreSQL row lock; SQLite
        write transactions are serialised already), so commands on one account queue."""
        q = self._accounts().where(accounts.c.account_id == account_id)
        if lock and self.conn.dialect.name == "postgresql":
            q = q.with_for_update()
        row = (await self.conn.execute(q)).first()
        return _account(row) if row else None

    async def lock(self, aggregate: str, aggregate_id: str) -> None:
        """Hold an account's or employee's read row until commit (see ``account``)."""
        if self.conn.dialect.name != "postgresql":
            return
        t, col = (
            (accounts, accounts.c.account_id)
            if aggregate == "account"
            else (employees, employees.c.employee_id)
        )
        q = select(col).where(t.c.tenant_id == self.tenant_id, col == aggregate_id)
        await self.conn.execute(q.with_for_update())

    async def address_taken(self, address: str) -> str | None:
        """The id of the (not deleted) account with this address, if any."""
        q = select(accounts.c.account_id).where(
            accounts.c.tenant_id == self.tenant_id, accounts.c.address_key == address_key(address)
        )
        return (await self.conn.execute(q)).scalar()

    async def accounts(self, f: AccountFilter, after: str | None, limit: int) -> list[AccountRow]:
        t = accounts.c
        q = self._accounts()
        for col, value in (
            (t.status, f.status),
            (t.owner_id, f.owner_id),
            (t.ownership, f.ownership),
            (t.protocol, f.protocol),
        ):
            if value is not None:
                q = q.where(col == value)
        if f.q:
            pattern = _like(f.q)
            q = q.where(
                or_(
                    t.address_key.like(pattern, escape="\\"),
                    func.lower(t.display_name).like(pattern, escape="\\"),
                )
            )
        if after:
            q = q.where(t.account_id > after)
        rows = await self.conn.execute(q.order_by(t.account_id).limit(limit))
        return [_account(r) for r in rows]

    # --- employees and departments ----------------------------------------------------------
    def _employees(self) -> Select[Any]:
        return select(employees).where(employees.c.tenant_id == self.tenant_id)

    async def employee(self, employee_id: str) -> EmployeeRow | None:
        row = (
            await self.conn.execute(self._employees().where(employees.c.employee_id == employee_id))
        ).first()
        return _employee(row) if row else None

    async def email_taken(self, email: str) -> str | None:
        q = select(employees.c.employee_id).where(
            employees.c.tenant_id == self.tenant_id, employees.c.email_key == address_key(email)
        )
        return (await self.conn.execute(q)).scalar()

    async def employees(
        self,
        *,
        status: str | None,
        department: str | None,
        q: str | None,
        after: str | None,
        limit: int,
    ) -> list[EmployeeRow]:
        t = employees.c
        stmt = self._employees()
        if status is not None:
            stmt = stmt.where(t.status == status)
        if department is not None:
            stmt = stmt.where(t.department_key == department_key(department))
        if q:
            pattern = _like(q)
            stmt = stmt.where(
                or_(
                    func.lower(t.name).like(pattern, escape="\\"),
                    t.email_key.like(pattern, escape="\\"),
                )
            )
        if after:
            stmt = stmt.where(t.employee_id > after)
        rows = await self.conn.execute(stmt.order_by(t.employee_id).limit(limit))
        return [_employee(r) for r in rows]

    async def departments(self) -> list[tuple[str, list[EmployeeRow]]]:
        d = departments.c
        names = (
            await self.conn.execute(
                select(d.key, d.name).where(d.tenant_id == self.tenant_id).order_by(d.key)
            )
        ).all()
        members: dict[str, list[EmployeeRow]] = {key: [] for key, _ in names}
        rows = await self.conn.execute(
            self._employees()
            .where(employees.c.department_key.is_not(None))
            .order_by(employees.c.name, employees.c.employee_id)
        )
        for r in rows:
            members.setdefault(r.department_key, []).append(_employee(r))
        return [(name, members[key]) for key, name in names]

    # --- credential blobs -------------------------------------------------------------------
    async def put_blob(self, blob: BlobRow) -> None:
        """Store an account's credential; its earlier blob, if any, is deleted (shredded)."""
        await self.shred_blobs(blob.account_id)
        await self.conn.execute(
            insert(credential_blobs).values(
                blob_id=blob.blob_id,
                tenant_id=self.tenant_id,
                account_id=blob.account_id,
                field=blob.field,
                version=blob.version,
                kek_version=blob.kek_version,
                blob=blob.blob,
                created_at=datetime.now(UTC),
            )
        )

    async def blob(self, blob_id: str) -> BlobRow | None:
        b = credential_blobs.c
        row = (
            await self.conn.execute(
                select(b.blob_id, b.account_id, b.field, b.version, b.kek_version, b.blob).where(
                    b.tenant_id == self.tenant_id, b.blob_id == blob_id
                )
            )
        ).first()
        return BlobRow(row[0], row[1], row[2], row[3], row[4], bytes(row[5])) if row else None

    async def rewrap_blob(self, blob_id: str, kek_version: int, blob: bytes) -> None:
        b = credential_blobs.c
        await self.conn.execute(
            update(credential_blobs)
            .where(b.tenant_id == self.tenant_id, b.blob_id == blob_id)
            .values(kek_version=kek_version, blob=blob)
        )

    async def shred_blobs(self, account_id: str) -> int:
        b = credential_blobs.c
        result = await self.conn.execute(
            delete(credential_blobs).where(
                b.tenant_id == self.tenant_id, b.account_id == account_id
            )
        )
        return int(result.rowcount or 0)

    async def blobs_not_under(
        self, kek_version: int, after: str, limit: int
    ) -> list[tuple[str, str]]:
        """(blob_id, account_id) of blobs wrapped under another KEK, by blob id > ``after``."""
        b = credential_blobs.c
        rows = await self.conn.execute(
            select(b.blob_id, b.account_id)
            .where(b.tenant_id == self.tenant_id, b.kek_version != kek_version, b.blob_id > after)
            .order_by(b.blob_id)
            .limit(limit)
        )
        return [(r[0], r[1]) for r in rows]

    async def blobs_by_kek(self) -> dict[int, int]:
        b = credential_blobs.c
        rows = await self.conn.execute(
            select(b.kek_version, func.count())
            .where(b.tenant_id == self.tenant_id)
            .group_by(b.kek_version)
        )
        return {int(r[0]): int(r[1]) for r in rows}

    # --- idempotency keys -------------------------------------------------------------------
    async def idempotent(self, key: str, ttl: timedelta) -> tuple[str, str] | None:
        """(fingerprint, account_id) stored under ``key`` within ``ttl``; older keys expire."""
        k = idempotency_keys.c
        where = (k.tenant_id == self.tenant_id, k.key == key)
        row = (
            await self.conn.execute(select(k.fingerprint, k.account_id, k.created_at).where(*where))
        ).first()
        if row is None:
            return None
        if _aware(row[2]) < datetime.now(UTC) - ttl:
            return None
        return row[0], row[1]

    async def remember(self, key: str, fingerprint: str, account_id: str, ttl: timedelta) -> None:
        """Store ``key``; a concurrent request with the same key fails on the primary key."""
        k = idempotency_keys.c
        await self.conn.execute(
            delete(idempotency_keys).where(
                k.tenant_id == self.tenant_id, k.key == key, k.created_at < datetime.now(UTC) - ttl
            )
        )
        await self.conn.execute(
            insert(idempotency_keys).values(
                tenant_id=self.tenant_id,
                key=key,
                fingerprint=fingerprint,
                account_id=account_id,
                created_at=datetime.now(UTC),
            )
        )


async def count_blobs_under_kek(conn: AsyncConnection, kek_version: int) -> int:
    """Operator-level: how many blobs of any tenant a KEK still wraps (guards ``retire``).

    Called in a write transaction: on PostgreSQL the table is locked (SHARE) first, so writes of
    credentials still in flight — sealed under the old KEK before a rotation, committed later —
    finish and are counted, and new ones wait (SQLite's single writer does the same)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"LOCK TABLE {credential_blobs.name} IN SHARE MODE"))
    b = credential_blobs.c
    q = select(func.count()).select_from(credential_blobs).where(b.kek_version == kek_version)
    return int((await conn.execute(q)).scalar() or 0)
