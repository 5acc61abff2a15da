"""Credential commands: replace a secret, rotate and retire KEKs, lease a secret.

The lease is the only path by which a plaintext secret leaves the registry; every lease appends
a CredentialAccessed event in the same transaction as it reads the blob.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ParamSpec, TypeVar

from pydantic import SecretStr

from libs.common.errors import Conflict, NotFound
from libs.common.events.envelope import CommandContext
from libs.common.events.registry import AccountSettings, CredentialRef
from libs.common.ids import new_id
from libs.common.logs import remember_secret
from libs.common.store.eventstore import ConcurrencyError
from services.registry import crypto
from services.registry.domain import accounts
from services.registry.domain_accounts import AccountState
from services.registry.handlers import (
    Handlers,
    binding,
    check_expected,
    credential_field,
    load_account,
    seal_blob,
    wrap,
)
from services.registry.keyring import KeyRetireRefusedError, KeyRingError
from services.registry.repository import AccountRow, RegistryRepository, count_blobs_under_kek

log = logging.getLogger("mailroom.registry")
ATTEMPTS = 5
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    account_id: str
    address: str
    auth_mode: str
    username: str
    field: str
    credential_version: int
    secret: SecretStr
    lease_expires_at: datetime
    settings: AccountSettings


@dataclass(slots=True)
class RotateResult:
    generated: bool
    active_version: int
    versions: tuple[int, ...]
    rewrapped: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RetireResult:
    version: int
    removed_from_keyring: bool
    active_version: int
    versions: tuple[int, ...]


def state_from_row(row: AccountRow) -> AccountState:
    """The account's state from its read row, which commits with every event (a snapshot)."""
    ref = None
    if row.credential_blob_id and row.credential_version and row.kek_version:
        ref = CredentialRef(
            blob_id=row.credential_blob_id,
            version=row.credential_version,
            kek_version=row.kek_version,
            field=row.credential_field or "password",
        )
    return AccountState(
        id=row.id,
        version=row.version,
        status="disabled" if row.status == "disabled" else "active",
        address=row.address,
        protocol=row.protocol,  # type: ignore[arg-type]
        ownership=row.ownership,  # type: ignore[arg-type]
        owner_id=row.owner_id,
        preset_id=row.preset_id,
        settings=row.settings,
        credential=ref,
    )


class CredentialHandlers:
    def __init__(self, base: Handlers) -> None:
        self.db = base.db
        self.keys = base.keys
        self.settings = base.settings

    async def replace_credential(
        self, ctx: CommandContext, account_id: str, secret: SecretStr, expected: int | None = None
    ) -> AccountState:
        """A new secret: a new blob (version + 1) replaces and shreds the old one."""
        async with self.db.transaction() as tx:
            state = await load_account(tx, ctx.tenant_id, account_id)
            check_expected(account_id, expected, state.version)
            ref = CredentialRef(
                blob_id=new_id(),
                version=accounts.next_credential_version(state),
                kek_version=self.keys.ring.active_version,
                field=credential_field(state.settings.auth_mode),
            )
            events = accounts.decide(accounts.ReplaceCredential(ref), state)
            repo = RegistryRepository(tx.conn, ctx.tenant_id)
            await repo.put_blob(seal_blob(self.keys, secret, ctx.tenant_id, account_id, ref))
            await tx.append(
                wrap(ctx, account_id, state.version, events), expected_version=state.version
            )
        for e in events:
            state = accounts.evolve(state, e)
        return state

    # --- KEK rotation -----------------------------------------------------------------------
    async def rotate_keys(self, ctx: CommandContext, generate: bool | None) -> RotateResult:
        """Re-read (or, for the embedded ring, extend) the key ring, then re-wrap every blob of
        the tenant under the active KEK. Plaintext is never decrypted: only data keys move."""
        async with self.keys.lock:
            if generate and not self.keys.managed:
                raise Conflict(
                    "the key ring is mounted by the operator (MAILROOM_KEKS[_FILE]); "
                    "add the new version there, then rotate",
                    code="keyring_external",
                )
            do_generate = self.keys.managed if generate is None else generate
            try:
                ring = self.keys.add_version() if do_generate else self.keys.reload()
            except KeyRingError as exc:
                raise Conflict(f"cannot load the key ring: {exc}", code="keyring_invalid") from None
            result = RotateResult(do_generate, ring.active_version, ring.versions)
            after = ""
            while True:
                async with self.db.read() as conn:
                    batch = await RegistryRepository(conn, ctx.tenant_id).blobs_not_under(
                        ring.active_version, after, self.settings.rotate_batch
                    )
                if not batch:
                    return result
                for blob_id, account_id in batch:
                    try:
                        if await self._retrying(self._rewrap_one, ctx, account_id, blob_id):
                            result.rewrapped += 1
                    except (crypto.CryptoError, Conflict, NotFound) as exc:
                        log.warning(
                            "KEK rotation: account %s not re-wrapped: %s",
                            account_id,
                            type(exc).__name__,
                        )
                        result.failed.append(account_id)
                after = batch[-1][0]

    async def _rewrap_one(self, ctx: CommandContext, account_id: str, blob_id: str) -> bool:
        ring = self.keys.ring
        async with self.db.transaction() as tx:
            state = await load_account(tx, ctx.tenant_id, account_id)
            ref = state.credential
            repo = RegistryRepository(tx.conn, ctx.tenant_id)
            blob = await repo.blob(blob_id)
            if ref is None or blob is None or ref.blob_id != blob_id:
                return False  # replaced or deleted meanwhile: nothing left to re-wrap
            sealed = crypto.SealedSecret.from_bytes(blob.blob)
            new = crypto.rewrap(
                ring, sealed, tenant_id=ctx.tenant_id, account_id=account_id, field=binding(ref)
            )
            new_ref = ref.model_copy(update={"kek_version": new.kek_version})
            events = accounts.decide(accounts.RewrapCredential(new_ref), state)
            if new is not sealed:
                await repo.rewrap_blob(blob_id, new.kek_version, new.to_bytes())
            await tx.append(
                wrap(ctx, account_id, state.version, events), expected_version=state.version
            )
            return bool(events)

    async def retire_key(self, version: int) -> RetireResult:
        """Drop a KEK version; refused while it is active or any blob (any tenant) uses it."""
        async with self.keys.lock:
            try:
                ring = self.keys.reload()
            except KeyRingError as exc:
                raise Conflict(f"cannot load the key ring: {exc}", code="keyring_invalid") from None
            if version not in ring:
                raise NotFound(
                    f"KEK version {version} is not in the key ring", code="unknown_kek_version"
                )
            if version == ring.active_version:
                raise Conflict(f"KEK version {version} is active; rotate first", code="kek_active")
            # Count and drop the version in a write transaction: a credential sealed under it
            # before the rotation but committed after a plain read would be lost (an import
            # chunk on PostgreSQL was: tests/chaos/test_key_rotation.py).
            async with self.db.transaction() as tx:
                in_use = await count_blobs_under_kek(tx.conn, version)
                try:
                    removed = self.keys.retire(version, in_use)
                except KeyRetireRefusedError:
                    raise Conflict(
                        f"KEK version {version} still wraps {in_use} credential(s); "
                        "run `mailroom keys rotate` first",
                        code="kek_in_use",
                        details={"blobs": in_use},
                    ) from None
            ring = self.keys.ring
            return RetireResult(version, removed, ring.active_version, ring.versions)

    async def key_usage(self, tenant_id: str) -> dict[int, int]:
        async with self.db.read() as conn:
            return await RegistryRepository(conn, tenant_id).blobs_by_kek()

    # --- leases -----------------------------------------------------------------------------
    async def lease(
        self, tenant_id: str, account_id: str, service: str, purpose: str
    ) -> LeaseGrant:
        ctx = CommandContext(tenant_id=tenant_id, actor=f"service:{service}")
        return await self._retrying(self._lease_once, ctx, account_id, service, purpose)

    async def open_for_test(self, ctx: CommandContext, account_id: str) -> LeaseGrant:
        """The stored secret for a connection test in this process (never returned to the
        caller); audited as CredentialAccessed by ``registry``, purpose ``connection_test``."""
        return await self._retrying(
            self._lease_once, ctx, account_id, "registry", "connection_test"
        )

    async def _lease_once(
        self, ctx: CommandContext, account_id: str, service: str, purpose: str
    ) -> LeaseGrant:
        expires = datetime.now(UTC) + timedelta(seconds=self.settings.lease_ttl_s)
        async with self.db.transaction() as tx:
            repo = RegistryRepository(tx.conn, ctx.tenant_id)
            row = await repo.account(account_id, lock=True)
            if row is None:
                raise NotFound(f"no account {account_id}")
            state = state_from_row(row)
            events = accounts.decide(
                accounts.AccessCredential(service, purpose, expires.isoformat()), state
            )
            ref = state.credential
            assert ref is not None  # decide refuses accounts without a credential
            blob = await repo.blob(ref.blob_id)
            if blob is None or (blob.account_id, blob.version, blob.kek_version) != (
                account_id,
                ref.version,
                ref.kek_version,
            ):
                raise Conflict(
                    "the stored credential does not match the account",
                    code="credential_unavailable",
                )
            try:
                plain = crypto.open_sealed(
                    self.keys.ring,
                    crypto.SealedSecret.from_bytes(blob.blob),
                    tenant_id=ctx.tenant_id,
                    account_id=account_id,
                    field=binding(ref),
                )
            except crypto.CryptoError as exc:
                log.error(
                    "lease of account %s: credential does not open (%s)",
                    account_id,
                    type(exc).__name__,
                )
                raise Conflict(
                    "the stored credential cannot be opened", code="credential_unavailable"
                ) from None
            await tx.append(
                wrap(ctx, account_id, state.version, events), expected_version=state.version
            )
        secret = plain.decode("utf-8")
        remember_secret(secret)
        return LeaseGrant(
            account_id=account_id,
            address=row.address,
            auth_mode=row.settings.auth_mode,
            username=row.settings.username,
            field=ref.field,
            credential_version=ref.version,
            secret=SecretStr(secret),
            lease_expires_at=expires,
            settings=row.settings,
        )

    @staticmethod
    async def _retrying(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Retry on a concurrent append to the same aggregate (optimistic concurrency)."""
        for attempt in range(ATTEMPTS):
            try:
                return await fn(*args, **kwargs)
            except ConcurrencyError:
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise AssertionError("unreachable")
