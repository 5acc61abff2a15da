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

    async def get(self, tenant_id: str, mailbox_id: str, purpose: str) -> Credential | None:
        key = (tenant_id, mailbox_id)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            lease = await lease_credential(
                self.nc, tenant_id, mailbox_id, "sender", purpose, timeout=self.timeout
            )
        except LeaseRefused as exc:
            # No credential, disabled, deleted: asking again will not help.
            reason: SendFailure = (
                "auth_failed" if exc.code in ("no_credential", "not_found") else "other"
            )
            raise DeliveryFailed(reason, f"lease refused: {exc.code}", permanent=True) from None
        except Unavailable:
            raise DeliveryFailed(
                "server_down", "the registry did not lease the credential", permanent=False
            ) from None
        cred = Credential(lease.username, lease.secret, lease.auth_mode)
        ttl = (lease.lease_expires_at.timestamp() - time.time()) - self.MARGIN_S
        if ttl > 0:
            self._cache[key] = (time.monotonic() + ttl, cred)
        return cred

    def forget(self, tenant_id: str, mailbox_id: str) -> bool:
        return self._cache.pop((tenant_id, mailbox_id), None) is not None
