"""OAuth2 authorization requests in flight (table ``oauth_states``), scoped by tenant.

A request is stored when ``/v1/oauth/{provider}/start`` redirects and taken (deleted) by the
first callback that names it, so a state works once. Only the SHA-256 of the state is stored;
the PKCE verifier is sealed like a credential (bound to tenant, account and field).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.registry.tables import oauth_states


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True, repr=False)
class PendingAuth:
    state_hash: str
    account_id: str
    provider: str
    actor: str
    binding_hash: str
    redirect_uri: str
    verifier: bytes
    """Sealed (``crypto.SealedSecret`` bytes)."""
    created_at: datetime
    expires_at: datetime

    def __repr__(self) -> str:
        return f"PendingAuth(account_id={self.account_id!r}, provider={self.provider!r})"


class OAuthStateRepository:
    def __init__(self, conn: AsyncConnection, tenant_id: str) -> None:
        self.conn = conn
        self.tenant_id = tenant_id

    async def put(self, p: PendingAuth) -> None:
        await self.conn.execute(
            insert(oauth_states).values(
                tenant_id=self.tenant_id,
                state_hash=p.state_hash,
                account_id=p.account_id,
                provider=p.provider,
                actor=p.actor,
                binding_hash=p.binding_hash,
                redirect_uri=p.redirect_uri,
                verifier=p.verifier,
                created_at=p.created_at,
                expires_at=p.expires_at,
            )
        )

    async def take(self, state_hash: str) -> PendingAuth | None:
        """The request with this state, deleted in the same transaction (single use)."""
        s = oauth_states.c
        where = (s.tenant_id == self.tenant_id, s.state_hash == state_hash)
        row = (
            await self.conn.execute(
                select(
                    s.state_hash,
                    s.account_id,
                    s.provider,
                    s.actor,
                    s.binding_hash,
                    s.redirect_uri,
                    s.verifier,
                    s.created_at,
                    s.expires_at,
                ).where(*where)
            )
        ).first()
        if row is None:
            return None
        result = await self.conn.execute(delete(oauth_states).where(*where))
        if not result.rowcount:  # a concurrent callback took it first
            return None
        return PendingAuth(
            row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), row[7], row[8]
        )

    async def purge_expired(self, now: datetime) -> int:
        s = oauth_states.c
        result = await self.conn.execute(
            delete(oauth_states).where(s.tenant_id == self.tenant_id, s.expires_at < now)
        )
        return int(result.rowcount or 0)
