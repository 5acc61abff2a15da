"""Queries of the signature read tables, each scoped to one tenant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.registry.tables import personal_signatures, signatures


@dataclass(frozen=True, slots=True)
class SignatureRow:
    owner_id: str
    """The account (mailbox signatures) or the employee (personal signature)."""
    name: str
    html: str
    text: str
    updated_at: datetime
    updated_by: str


def _row(r: Any, owner_id: str, name: str) -> SignatureRow:
    at = r.updated_at if r.updated_at.tzinfo is not None else r.updated_at.replace(tzinfo=UTC)
    return SignatureRow(owner_id, name, r.html, r.text, at, r.updated_by)


class SignatureRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    async def of_account(self, account_id: str, name: str | None = None) -> list[SignatureRow]:
        """The mailbox's signatures (default first, then alternates by name), or one of them."""
        s = signatures
        q = select(s).where(s.c.tenant_id == self.tenant_id, s.c.account_id == account_id)
        if name is not None:
            q = q.where(s.c.name == name)
        rows = [_row(r, account_id, r.name) for r in await self.conn.execute(q)]
        return sorted(rows, key=lambda r: (r.name != "default", r.name))

    async def personal(self, employee_id: str) -> SignatureRow | None:
        p = personal_signatures
        q = select(p).where(p.c.tenant_id == self.tenant_id, p.c.employee_id == employee_id)
        r = (await self.conn.execute(q)).first()
        return _row(r, employee_id, "personal") if r is not None else None
