"""Where the SMTP/IMAP secret comes from: the ``CredentialSource`` protocol.

Production leases it from the registry over NATS (:class:`RegistryLeases`, one lease per
account, reused until shortly before it expires, as ``libs.common.leases`` allows, and dropped
at once when the server refuses it). Tests and the benchmark supply their own.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from libs.common.errors import Unavailable
from libs.common.events.sender import SendFailure
from libs.common.leases import LeaseRefused, lease_credential
from services.sender.domain import DeliveryFailed
from services.sender.smtp import Credential


class CredentialSource(Protocol):
    async def get(self, tenant_id: str, mailbox_id: str, purpose: str) -> Credential | None:
        """The account's credential (None: the server needs no AUTH). Raise
        ``DeliveryFailed`` when it cannot be had (``permanent`` if asking again cannot help)."""
        ...

    def forget(self, tenant_id: str, mailbox_id: str) -> bool:
        """The server refused the credential: drop a cached copy; True if there was one
        (then asking again may give a newer credential)."""
        ...


class StaticCredentials:
    """Fixed credentials per mailbox (tests, the benchmark, relays without AUTH)."""

    def __init__(self, by_mailbox: dict[str, Credential] | None = None) -> None:
        self.by_mailbox: dict[str, Credential] = dict(by_mailbox or {})
        self.requests: list[tuple[str, str, str]] = []

    async def get(self, tenant_id: str, mailbox_id: str, purpose: str) -> Credential | None:
        self.requests.append((tenant_id, mailbox_id, purpose))
        return self.by_mailbox.get(mailbox_id)

    def forget(self, tenant_id: str, mailbox_id: str) -> bool:
        return False


class RegistryLeases:
    """Credentials leased from the registry (``mailroom-rpc.registry.lease``)."""

    MARGIN_S = 30.0

    def __init__(self, nc: Any, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._cache: dict[tuple[str, str], tuple[float, Credential]] = {}
        self._refresh: set[tuple[str, str]] = set()

    async def get(self, tenant_id: str, mailbox_id: str, purpose: str) -> Credential | None:
        key = (tenant_id, mailbox_id)
        hit = self._cache.get(key)
        refresh = key in self._refresh
        if not refresh and hit is not None and hit[0] > time.monotonic():
            return hit[1]
        self._refresh.discard(key)
        try:
            lease = await lease_credential(
                self.nc,
                tenant_id,
                mailbox_id,
                "sender",
                purpose,
                timeout=self.timeout,
                refresh=refresh,
            )
        except LeaseRefused as exc:
            if exc.status >= 500:  # e.g. the OAuth2 provider did not answer the refresh
                raise DeliveryFailed(
                    "server_down", f"lease refused: {exc.code}", permanent=False
                ) from None
            # No credential, disabled, deleted, OAuth2 reconnect: asking again will not help.
            reason: SendFailure = (
                "auth_failed"
                if exc.code in ("no_credential", "not_found", "oauth_reconnect_required")
                else "other"
            )
            raise DeliveryFailed(
                reason, f"lease refused: {exc.code}: {exc.message}", permanent=True
            ) from None
        except Unavailable:
            raise DeliveryFailed(
                "server_down", "the registry did not lease the credential", permanent=False
            ) from None
        cred = Credential(lease.username, lease.secret, lease.auth_mode)
        ttl = (lease.lease_expires_at.timestamp() - time.time()) - self.MARGIN_S
        self._cache[key] = (time.monotonic() + ttl, cred)  # expired ones tell forget() the mode
        return cred

    def forget(self, tenant_id: str, mailbox_id: str) -> bool:
        key = (tenant_id, mailbox_id)
        hit = self._cache.pop(key, None)
        if hit is None:
            return False
        if hit[1].auth_mode == "oauth2":  # a refused access token: the next lease refreshes it
            self._refresh.add(key)
            return True
        return hit[0] > time.monotonic()
