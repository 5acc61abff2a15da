"""Connecting an account by OAuth2: authorization code with PKCE (RFC 6749 4.1, RFC 7636).

``start`` checks the account (OAuth2 auth mode, not disabled) and the tenant's provider,
stores the request (state hashed, PKCE verifier sealed, bound to tenant, account and actor,
``oauth_state_ttl_s`` to live) and returns the provider's authorize URL (S256 challenge) and a
browser-binding value for a cookie. ``callback`` takes the request by its state — once: a
replay finds nothing — checks it was started by this caller (same bearer, or the binding
cookie of the browser that started it: no login CSRF), exchanges the code with the verifier
and stores the tokens like any credential (``CredentialRotated``). Nothing returns a token.

The state is ``<tenant, base64url>.<random>`` so the callback's lookup is scoped by tenant.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from libs.common.auth import Principal
from libs.common.errors import Conflict, MailroomError, NotFound
from libs.common.events.envelope import CommandContext
from libs.common.store.database import Database
from services.registry import crypto
from services.registry.oauth_client import OAuthGrantError, OAuthProviderError, Pkce
from services.registry.oauth_lease import OAuthCredentialHandlers
from services.registry.oauth_states import OAuthStateRepository, PendingAuth, digest
from services.registry.repository import RegistryRepository

log = logging.getLogger("mailroom.registry.oauth")
VERIFIER_FIELD = "oauth_pkce"


def _bad(code: str, message: str) -> MailroomError:
    return MailroomError(message, code=code, status=400)


def _provider_down(exc: Exception) -> MailroomError:
    return MailroomError(
        f"the OAuth provider could not be reached: {exc}",
        code="oauth_provider_unavailable",
        status=502,
    )


@dataclass(frozen=True)
class Started:
    location: str
    state: str
    binding: str
    """The value of the browser-binding cookie (only its hash is stored)."""
    ttl_s: int


@dataclass(frozen=True)
class Connected:
    account_id: str
    provider: str
    credential_version: int
    scope: str
    access_expires_at: datetime


def make_state(tenant_id: str) -> str:
    tenant = base64.urlsafe_b64encode(tenant_id.encode("utf-8")).decode("ascii").rstrip("=")
    return f"{tenant}.{secrets.token_urlsafe(32)}"


def tenant_of(state: str) -> str:
    foreign = _bad("oauth_state_invalid", "the state parameter is not one Mailroom issued")
    head, dot, tail = state.partition(".")
    if not dot or not head or len(tail) < 32 or len(state) > 400:
        raise foreign
    try:
        tenant = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise foreign from None
    if not tenant or len(tenant) > 64:
        raise foreign
    return tenant


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class OAuthFlow:
    def __init__(self, db: Database, creds: OAuthCredentialHandlers) -> None:
        self.db = db
        self.creds = creds
        self.keys = creds.keys
        self.settings = creds.settings
        self.clients = creds.clients
        self.http = creds.http

    def redirect_uri(self, provider: str, request_base: str, tenant_id: str) -> str:
        cfg = self.clients.get(tenant_id, provider)
        if cfg.redirect_uri:
            return cfg.redirect_uri
        base = (self.settings.oauth_redirect_base or request_base).rstrip("/")
        return f"{base}/v1/oauth/{provider}/callback"

    async def start(
        self, caller: Principal, provider: str, account_id: str, redirect_uri: str
    ) -> Started:
        tenant = caller.tenant_id
        cfg = self.clients.get(tenant, provider)
        async with self.db.read() as conn:
            row = await RegistryRepository(conn, tenant).account(account_id)
        if row is None:
            raise NotFound(f"no account {account_id}")
        if row.status == "disabled":
            raise Conflict("the account is disabled", code="account_disabled")
        if row.settings.auth_mode != "oauth2":
            raise Conflict(
                "the account does not sign in with OAuth2: set auth_mode to oauth2 first "
                "(PATCH /v1/accounts/{id})",
                code="not_oauth_account",
            )
        state, binding, pkce = make_state(tenant), secrets.token_urlsafe(32), Pkce.new()
        try:
            location = await self.http.authorize_url(
                cfg, redirect_uri=redirect_uri, state=state, pkce=pkce, login_hint=row.address
            )
        except OAuthProviderError as exc:
            raise _provider_down(exc) from None
        sealed = crypto.seal(
            self.keys.ring,
            pkce.verifier.encode("ascii"),
            tenant_id=tenant,
            account_id=account_id,
            field=VERIFIER_FIELD,
        )
        now = datetime.now(UTC)
        ttl = self.settings.oauth_state_ttl_s
        pending = PendingAuth(
            state_hash=digest(state),
            account_id=account_id,
            provider=provider,
            actor=caller.actor,
            binding_hash=digest(binding),
            redirect_uri=redirect_uri,
            verifier=sealed.to_bytes(),
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
        )
        async with self.db.transaction() as tx:
            repo = OAuthStateRepository(tx.conn, tenant)
            await repo.purge_expired(now)
            await repo.put(pending)
        return Started(location, state, binding, ttl)

    async def callback(
        self,
        provider: str,
        *,
        state: str | None,
        code: str | None,
        error: str | None,
        principal: Principal | None,
        binding: str | None,
    ) -> Connected:
        if not state:
            raise _bad("oauth_state_missing", "the callback has no state parameter")
        tenant = tenant_of(state)
        async with self.db.transaction() as tx:
            pending = await OAuthStateRepository(tx.conn, tenant).take(digest(state))
        if pending is None or pending.provider != provider:
            raise _bad(
                "oauth_state_invalid",
                "unknown or already used state: start the connection again",
            )
        if _aware(pending.expires_at) < datetime.now(UTC):
            raise _bad("oauth_state_expired", "the authorization took too long: start again")
        self._check_bound(pending, tenant, principal, binding)
        if error:
            code_name = "".join(c for c in error if c.isalnum() or c == "_")[:64]
            raise _bad("oauth_denied", f"the provider did not authorize Mailroom ({code_name})")
        if not code or len(code) > 4096:
            raise _bad("oauth_code_missing", "the callback has no authorization code")
        verifier = crypto.open_sealed(
            self.keys.ring,
            crypto.SealedSecret.from_bytes(pending.verifier),
            tenant_id=tenant,
            account_id=pending.account_id,
            field=VERIFIER_FIELD,
        ).decode("ascii")
        cfg = self.clients.get(tenant, provider)
        try:
            doc = await self.http.exchange_code(
                cfg, provider, code=code, redirect_uri=pending.redirect_uri, verifier=verifier
            )
        except OAuthProviderError as exc:
            raise _provider_down(exc) from None
        except OAuthGrantError as exc:
            log.warning("OAuth code exchange for account %s refused: %s", pending.account_id, exc)
            raise _bad(
                "oauth_code_rejected", f"the provider refused the authorization code ({exc})"
            ) from None
        ctx = CommandContext(tenant_id=tenant, actor=pending.actor)
        version = await self.creds.connect(ctx, pending.account_id, doc)
        return Connected(
            pending.account_id,
            provider,
            version,
            doc.scope,
            datetime.fromtimestamp(doc.expires_at, UTC),
        )

    @staticmethod
    def _check_bound(
        pending: PendingAuth, tenant: str, principal: Principal | None, binding: str | None
    ) -> None:
        """A bearer token must be the starter's; without one, the browser's binding cookie."""
        if principal is not None:
            if (principal.tenant_id, principal.actor) != (tenant, pending.actor):
                raise _bad("oauth_state_mismatch", "this authorization was started by someone else")
            return
        if binding and hmac.compare_digest(digest(binding), pending.binding_hash):
            return
        raise _bad(
            "oauth_state_unbound",
            "finish the authorization in the browser that started it (or send its bearer token)",
        )
