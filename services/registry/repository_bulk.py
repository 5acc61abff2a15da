"""More queries of the registry, each scoped to one tenant: the organisation's mail settings
and the set-at-a-time look-ups and inserts of a bulk import (one statement per chunk of rows,
not per row)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import insert, select

from libs.common.events.registry import OrgMailSettings
from libs.common.store.keys import plan_each_time, select_by_keys
from services.registry.repository import (
    AccountRow,
    BlobRow,
    EmployeeRow,
    RegistryRepository,
    _account,
    _employee,
)
from services.registry.tables import accounts, credential_blobs, employees, org_settings

IN_CHUNK = 500


def _chunks(keys: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(keys))
    for i in range(0, len(items), IN_CHUNK):
        yield items[i : i + IN_CHUNK]


class BulkRepository(RegistryRepository):
    async def org_settings(self) -> OrgMailSettings | None:
        t = org_settings.c
        raw = (
            await self.conn.execute(select(t.settings).where(t.tenant_id == self.tenant_id))
        ).scalar()
        return OrgMailSettings.model_validate_json(raw) if raw else None

    async def accounts_by_key(self, keys: Iterable[str]) -> dict[str, AccountRow]:
        """Accounts by ``address_key`` for the given keys."""
        t = accounts.c
        found: dict[str, AccountRow] = {}
        await plan_each_time(self.conn)  # store/keys.py
        for chunk in _chunks(keys):
            rows = await self.conn.execute(
                select_by_keys(
                    accounts, t.address_key, chunk, t.tenant_id == self.tenant_id,
                    dialect=self.conn.dialect.name,
                )
            )  # fmt: skip
            for r in rows:
                found[r.address_key] = _account(r)
        return found

    async def employees_by_key(self, keys: Iterable[str]) -> dict[str, EmployeeRow]:
        """Employees by ``email_key`` for the given keys."""
        t = employees.c
        found: dict[str, EmployeeRow] = {}
        await plan_each_time(self.conn)  # store/keys.py
        for chunk in _chunks(keys):
            rows = await self.conn.execute(
                select_by_keys(
                    employees, t.email_key, chunk, t.tenant_id == self.tenant_id,
                    dialect=self.conn.dialect.name,
                )
            )  # fmt: skip
            for r in rows:
                found[r.email_key] = _employee(r)
        return found

    async def put_new_blobs(self, blobs: list[BlobRow]) -> None:
        """Store the credentials of new accounts (no earlier blob to shred), one statement."""
        if not blobs:
            return
        now = datetime.now(UTC)
        await self.conn.execute(
            insert(credential_blobs),
            [
                {
                    "blob_id": b.blob_id,
                    "tenant_id": self.tenant_id,
                    "account_id": b.account_id,
                    "field": b.field,
                    "version": b.version,
                    "kek_version": b.kek_version,
                    "blob": b.blob,
                    "created_at": now,
                }
                for b in blobs
            ],
        )
