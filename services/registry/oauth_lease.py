"""Leases of OAuth2 accounts: a current access token, refreshed before it expires.

An account connected through ``/v1/oauth/{provider}/start`` holds a sealed :class:`TokenDoc`
(refresh token, access token, expiry). A lease hands out only the access token. It is
refreshed first when it expires within ``oauth_refresh_margin_s`` (or half its lifetime, for
short-lived tokens), or when the requester says the last one was refused (``refresh=True``,
honoured once the token is ``oauth_forced_refresh_min_age_s`` old, so two services failing at
once refresh once). A refresh stores a new blob version (``CredentialRotated``, cause
``oauth_refresh``): the refreshed access token is cached encrypted, never in an event or log.

A refresh token the provider refuses (revoked, expired: ``invalid_grant``) refuses the lease
with ``oauth_reconnect_required`` and the way to reconnect; an unreachable provider with
``oauth_provider_unavailable`` (retry later). Refreshes of one account are serialised in this
process; across replicas the version check keeps the first stored refresh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import UTC, datetime

from libs.common.errors import Conflict, Unavailable
from libs.common.events.envelope import CommandContext
from libs.common.events.registry import CredentialRef
from libs.common.ids import new_id
from services.registry import crypto
from services.registry.domain import accounts
from services.registry.handlers import Handlers, binding, load_account, seal_blob, wrap
from services.registry.handlers_credentials import CredentialHandlers, LeaseGrant, state_from_row
from services.registry.oauth_client import OAuthGrantError, OAuthHttp, OAuthProviderError, TokenDoc
from services.registry.oauth_config import OAuthClients
from services.registry.repository import RegistryRepository

log = logging.getLogger("mailroom.registry.oauth")
#: Errors of a refresh that only the operator can fix (the client registration).
CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})


def reconnect_hint(provider: str, account_id: str) -> str:
    return f"reconnect the account: GET /v1/oauth/{provider}/start?account={account_id}"


class OAuthCredentialHandlers(CredentialHandlers):
    """Credential commands, with OAuth2 access tokens in place of stored token documents."""

    def __init__(self, base: Handlers, clients: OAuthClients, http: OAuthHttp) -> None:
        super().__init__(base)
        self.clients = clients
        self.http = http
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # --- what leaves ------------------------------------------------------------------------
    async def lease(
        self, tenant_id: str, account_id: str, service: str, purpose: str, refresh: bool = False
    ) -> LeaseGrant:
        await self.refresh_if_due(tenant_id, account_id, f"service:{service}", forced=refresh)
        return self._access(await super().lease(tenant_id, account_id, service, purpose))

    async def open_for_test(self, ctx: CommandContext, account_id: str) -> LeaseGrant:
        await self.refresh_if_due(ctx.tenant_id, account_id, ctx.actor, forced=False)
        return self._access(await super().open_for_test(ctx, account_id))

    @staticmethod
    def _access(grant: LeaseGrant) -> LeaseGrant:
        doc = TokenDoc.parse(grant.secret.get_secret_value())
        if doc is None:
            return grant  # a password, or a bare token stored through the credential API
        token_end = datetime.fromtimestamp(doc.expires_at, UTC)
        return dataclasses.replace(
            grant, secret=doc.access_token, lease_expires_at=min(grant.lease_expires_at, token_end)
        )

    # --- refresh ----------------------------------------------------------------------------
    def _due(self, doc: TokenDoc, forced: bool) -> bool:
        now = time.time()
        if forced:
            return now - doc.obtained_at >= self.settings.oauth_forced_refresh_min_age_s
        lifetime = max(0.0, doc.expires_at - doc.obtained_at)
        return doc.valid_for(now) < min(self.settings.oauth_refresh_margin_s, lifetime / 2)

    async def refresh_if_due(
        self, tenant_id: str, account_id: str, actor: str, *, forced: bool
    ) -> None:
        current = await self._peek(tenant_id, account_id)
        if current is None or not self._due(current[1], forced):
            return
        # one lock per OAuth2 account that ever refreshed here (a few bytes each, kept)
        async with self._locks.setdefault((tenant_id, account_id), asyncio.Lock()):
            current = await self._peek(tenant_id, account_id)  # refreshed meanwhile?
            if current is None or not self._due(current[1], forced):
                return
            version, doc = current
            fresh = await self._refresh(tenant_id, account_id, doc)
            ctx = CommandContext(tenant_id=tenant_id, actor=actor)
            await self._retrying(self._store, ctx, account_id, version, fresh)

    async def _peek(self, tenant_id: str, account_id: str) -> tuple[int, TokenDoc] | None:
        """The stored token document of an active account (no event: nothing leaves here)."""
        async with self.db.read() as conn:
            repo = RegistryRepository(conn, tenant_id)
            row = await repo.account(account_id)
            if row is None or row.settings.auth_mode != "oauth2":
                return None
            state = state_from_row(row)
            ref = state.credential
            if state.status != "active" or ref is None:
                return None
            blob = await repo.blob(ref.blob_id)
        if blob is None or blob.version != ref.version:
            return None
        try:
            plain = crypto.open_sealed(
                self.keys.ring,
                crypto.SealedSecret.from_bytes(blob.blob),
                tenant_id=tenant_id,
                account_id=account_id,
                field=binding(ref),
            )
        except crypto.CryptoError:
            return None  # the lease itself reports it (credential_unavailable)
        doc = TokenDoc.parse(plain.decode("utf-8"))
        return (ref.version, doc) if doc is not None else None

    async def _refresh(self, tenant_id: str, account_id: str, doc: TokenDoc) -> TokenDoc:
        cfg = self.clients.providers(tenant_id).get(doc.provider)
        if cfg is None:
            raise Conflict(
                f"OAuth provider {doc.provider!r} is no longer configured for this tenant",
                code="oauth_provider_unknown",
            )
        try:
            return await self.http.refresh(cfg, doc)
        except OAuthProviderError as exc:
            log.warning("OAuth refresh of account %s: provider unavailable: %s", account_id, exc)
            raise Unavailable(
                f"the OAuth provider {doc.provider!r} did not refresh the token: {exc}",
                code="oauth_provider_unavailable",
            ) from None
        except OAuthGrantError as exc:
            log.warning("OAuth refresh of account %s refused: %s", account_id, exc.error)
            if exc.error in CLIENT_ERRORS:
                raise Conflict(
                    f"the provider refused Mailroom's OAuth client ({exc.error}): "
                    "check the client id and secret",
                    code="oauth_client_rejected",
                ) from None
            raise Conflict(
                f"the provider refused the refresh token ({exc.error}: revoked or expired); "
                + reconnect_hint(doc.provider, account_id),
                code="oauth_reconnect_required",
                details={"provider": doc.provider},
            ) from None

    async def _store(
        self, ctx: CommandContext, account_id: str, from_version: int, doc: TokenDoc
    ) -> bool:
        """The refreshed document as the next credential version, unless the credential
        changed meanwhile (reconnected, replaced): then the newer one stays."""
        async with self.db.transaction() as tx:
            state = await load_account(tx, ctx.tenant_id, account_id)
            if state.credential is None or state.credential.version != from_version:
                return False
            ref = CredentialRef(
                blob_id=new_id(),
                version=from_version + 1,
                kek_version=self.keys.ring.active_version,
                field=state.credential.field,
            )
            events = accounts.decide(accounts.ReplaceCredential(ref, cause="oauth_refresh"), state)
            repo = RegistryRepository(tx.conn, ctx.tenant_id)
            await repo.put_blob(seal_blob(self.keys, doc.secret(), ctx.tenant_id, account_id, ref))
            await tx.append(
                wrap(ctx, account_id, state.version, events), expected_version=state.version
            )
        return True

    # --- connect ----------------------------------------------------------------------------
    async def connect(self, ctx: CommandContext, account_id: str, doc: TokenDoc) -> int:
        """Store the tokens of a completed authorization (``CredentialRotated``, replaced);
        returns the new credential version."""
        state = await self.replace_credential(ctx, account_id, doc.secret())
        assert state.credential is not None
        return state.credential.version
