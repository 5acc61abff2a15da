"""What sync needs from other services, behind small protocols tests can replace.

* :class:`CredentialSource` — a mailbox secret, leased from the registry
  (:func:`libs.common.leases.lease_credential`). A lease may be used until it expires, so it is
  kept in memory that long (never stored, never logged) and dropped on an authentication
  failure or a rotation: one lease per login burst, not per poll.
* :class:`Permissions` — may this principal read this mailbox's sync status? Tenant admins
  always; others as authz says (``read`` level, action ``status``), denied when authz does not
  answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import SecretStr

from libs.common.auth import Principal
from libs.common.authz_client import AuthzClient
from libs.common.errors import MailroomError
from libs.common.leases import lease_credential
from services.sync.domain import SyncError


@dataclass(frozen=True)
class Credential:
    username: str
    secret: SecretStr
    auth_mode: str = "password"
    expires_at: float = float("inf")  # time.monotonic()
    version: int = 0  # the registry's credential version (0: not known)


class CredentialSource(Protocol):
    async def get(self, tenant_id: str, account_id: str, *, refresh: bool = False) -> Credential:
        """``refresh``: the server refused the OAuth2 access token; get a refreshed one."""
        ...

    def forget(self, tenant_id: str, account_id: str) -> None: ...


class RegistryCredentials:
    """Leases from the registry over NATS, kept until shortly before the lease expires."""

    def __init__(self, nc: Any, *, margin_s: float = 30.0) -> None:
        self._nc = nc
        self._margin_s = margin_s
        self._cache: dict[tuple[str, str], Credential] = {}
        self.leases = 0

    async def get(self, tenant_id: str, account_id: str, *, refresh: bool = False) -> Credential:
        key = (tenant_id, account_id)
        cached = self._cache.get(key)
        if not refresh and cached is not None and cached.expires_at > time.monotonic():
            return cached
        try:
            lease = await lease_credential(
                self._nc, tenant_id, account_id, "sync", "mailbox sync", refresh=refresh
            )
        except MailroomError as exc:
            # Refused (no credential, disabled, OAuth2 reconnect) needs a person: back off like
            # a bad password; the registry's message says what to do.
            detail = f"credential lease: {exc.code}: {exc.message}"
            if exc.status >= 500:
                raise SyncError("unknown", detail) from None
            raise SyncError("auth", detail) from None
        self.leases += 1
        ttl = (lease.lease_expires_at.timestamp() - time.time()) - self._margin_s
        cred = Credential(
            lease.username,
            lease.secret,
            lease.auth_mode,
            time.monotonic() + ttl,
            lease.credential_version,
        )
        self._cache[key] = cred
        return cred

    def forget(self, tenant_id: str, account_id: str) -> None:
        self._cache.pop((tenant_id, account_id), None)


class StaticCredentials:
    """Credentials given in code (tests, benchmarks): ``{(tenant, account): (user, secret)}``."""

    def __init__(self, entries: dict[tuple[str, str], tuple[str, str]] | None = None) -> None:
        self.entries = dict(entries or {})
        self.versions: dict[tuple[str, str], int] = {}
        self.calls = 0

    def set(
        self, tenant_id: str, account_id: str, username: str, secret: str, version: int = 0
    ) -> None:
        self.entries[(tenant_id, account_id)] = (username, secret)
        self.versions[(tenant_id, account_id)] = version

    async def get(self, tenant_id: str, account_id: str, *, refresh: bool = False) -> Credential:
        self.calls += 1
        try:
            user, secret = self.entries[(tenant_id, account_id)]
        except KeyError:
            raise SyncError("auth", "no credential for this account") from None
        version = self.versions.get((tenant_id, account_id), 0)
        return Credential(user, SecretStr(secret), version=version)

    def forget(self, tenant_id: str, account_id: str) -> None:
        return None


class Permissions(Protocol):
    async def may_read(self, principal: Principal, mailbox_id: str) -> bool: ...


class AdminOnly:
    """Tenant admins may; nobody else."""

    async def may_read(self, principal: Principal, mailbox_id: str) -> bool:
        return principal.is_admin


class AuthzPermissions:
    """Tenant admins may; others need read on the mailbox (asked of authz, deny by default)."""

    def __init__(self, nc: Any) -> None:
        self.client = AuthzClient(nc)

    async def may_read(self, principal: Principal, mailbox_id: str) -> bool:
        if principal.is_admin:
            return True
        decision = await self.client.check(principal, mailbox_id, "status")
        return decision.allowed
