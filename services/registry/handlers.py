"""Command handlers: load the aggregate's events, decide, append with the expected version.

One handler per command. Each runs in one transaction of ``Database.transaction()``: events,
read tables (projector), credential blobs and idempotency keys commit together or not at all.
Credential commands (replace, KEK rotation, lease) live in :mod:`handlers_credentials`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError

from libs.common.errors import Conflict, MailroomError
from libs.common.events.base import Event
from libs.common.events.envelope import CommandContext, Envelope
from libs.common.events.registry import AccountAdded, AccountDeleted, CredentialRef
from libs.common.ids import new_id
from libs.common.logs import remember_secret
from libs.common.store.database import Database, Tx
from libs.common.store.eventstore import ConcurrencyError
from services.registry import crypto
from services.registry.domain import accounts, employees
from services.registry.domain_accounts import AccountState
from services.registry.domain_employees import EmployeeState
from services.registry.repository import BlobRow, RegistryRepository
from services.registry.settings import KeyStore, RegistrySettings
from services.registry.validation import Invalid


def wrap(
    ctx: CommandContext, aggregate_id: str, version: int, events: Sequence[Event]
) -> list[Envelope]:
    """Envelopes continuing an aggregate at ``version`` (its current version)."""
    return [
        Envelope.wrap(e, ctx, aggregate_id=aggregate_id, aggregate_version=version + i + 1)
        for i, e in enumerate(events)
    ]


def check_expected(aggregate_id: str, expected: int | None, actual: int) -> None:
    """``If-Match`` on the API: the caller's version must still be current."""
    if expected is not None and expected != actual:
        raise ConcurrencyError(aggregate_id, expected, actual)


def credential_field(auth_mode: str) -> str:
    return "oauth_token" if auth_mode == "oauth2" else "password"


def binding(ref: CredentialRef) -> str:
    """The ``field`` a blob is sealed under: its version is bound into the ciphertext, so an
    older blob put back in the table (a rollback) does not open for the current version."""
    return f"{ref.field}.v{ref.version}"


def seal_blob(
    keys: KeyStore, secret: SecretStr, tenant_id: str, account_id: str, ref: CredentialRef
) -> BlobRow:
    remember_secret(secret.get_secret_value())  # scrubbed from every later log record
    sealed = crypto.seal(
        keys.ring, secret, tenant_id=tenant_id, account_id=account_id, field=binding(ref)
    )
    return BlobRow(
        ref.blob_id, account_id, ref.field, ref.version, sealed.kek_version, sealed.to_bytes()
    )


async def load_account(tx: Tx, tenant_id: str, account_id: str) -> AccountState:
    """The account's state from its events; its read row is locked first, so concurrent
    commands on one account queue instead of failing on the expected version."""
    await RegistryRepository(tx.conn, tenant_id).lock("account", account_id)
    history = await tx.load(tenant_id, account_id)
    return accounts.fold(account_id, (e.event() for e in history))


async def load_employee(tx: Tx, tenant_id: str, employee_id: str) -> EmployeeState:
    await RegistryRepository(tx.conn, tenant_id).lock("employee", employee_id)
    history = await tx.load(tenant_id, employee_id)
    return employees.fold(employee_id, (e.event() for e in history))


async def check_owner(repo: RegistryRepository, owner_id: str | None) -> None:
    if owner_id is None:
        return
    owner = await repo.employee(owner_id)
    if owner is None:
        raise Invalid(
            f"no employee {owner_id} in this directory",
            code="unknown_owner",
            details={"field": "owner_id"},
        )
    if owner.status != "active":
        raise Invalid(
            f"employee {owner_id} is offboarded",
            code="owner_offboarded",
            details={"field": "owner_id"},
        )


def duplicate_address(address: str) -> Conflict:
    return Conflict(
        f"an account with address {address} already exists in this tenant", code="duplicate_address"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    fingerprint: str


class Handlers:
    def __init__(self, db: Database, keys: KeyStore, settings: RegistrySettings) -> None:
        self.db = db
        self.keys = keys
        self.settings = settings

    # --- accounts ---------------------------------------------------------------------------
    async def add_account(
        self,
        ctx: CommandContext,
        cmd: accounts.AddAccount,
        secret: SecretStr | None,
        idem: Idempotency | None = None,
    ) -> tuple[str, bool]:
        """Returns (account id, replayed): a repeated Idempotency-Key returns the first id."""
        if idem is not None:
            async with self.db.read() as conn:
                hit = await RegistryRepository(conn, ctx.tenant_id).idempotent(
                    idem.key, self._idem_ttl
                )
            if hit is not None:
                return self._replay(hit, idem), True
        account_id = new_id()
        try:
            async with self.db.transaction() as tx:
                repo = RegistryRepository(tx.conn, ctx.tenant_id)
                if idem is not None:
                    hit = await repo.idempotent(idem.key, self._idem_ttl)
                    if hit is not None:
                        return self._replay(hit, idem), True
                state = await load_account(tx, ctx.tenant_id, account_id)
                events = accounts.decide(cmd, state)
                added = events[0]
                assert isinstance(added, AccountAdded)
                if await repo.address_taken(added.address):
                    raise duplicate_address(added.address)
                await check_owner(repo, cmd.owner_id)
                if secret is not None:
                    ref = CredentialRef(
                        blob_id=new_id(),
                        version=1,
                        kek_version=self.keys.ring.active_version,
                        field=credential_field(added.settings.auth_mode),
                    )
                    events = accounts.decide(dataclasses.replace(cmd, credential=ref), state)
                    await repo.put_blob(
                        seal_blob(self.keys, secret, ctx.tenant_id, account_id, ref)
                    )
                if idem is not None:
                    await repo.remember(idem.key, idem.fingerprint, account_id, self._idem_ttl)
                await tx.append(wrap(ctx, account_id, 0, events), expected_version=0)
        except IntegrityError:
            conflict = duplicate_address(cmd.address)  # the unique index caught a race
        except Conflict as exc:
            if exc.code != "duplicate_address":
                raise
            conflict = exc
        else:
            return account_id, False
        # A concurrent create won: with the same Idempotency-Key this is a replay.
        if idem is not None:
            async with self.db.read() as conn:
                hit = await RegistryRepository(conn, ctx.tenant_id).idempotent(
                    idem.key, self._idem_ttl
                )
            if hit is not None:
                return self._replay(hit, idem), True
        raise conflict

    @property
    def _idem_ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.idempotency_ttl_s)

    @staticmethod
    def _replay(hit: tuple[str, str], idem: Idempotency) -> str:
        fingerprint, account_id = hit
        if fingerprint != idem.fingerprint:
            raise Invalid(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
            )
        return account_id

    async def _account_command(
        self,
        ctx: CommandContext,
        account_id: str,
        command: accounts.Command,
        expected: int | None = None,
    ) -> AccountState:
        async with self.db.transaction() as tx:
            state = await load_account(tx, ctx.tenant_id, account_id)
            check_expected(account_id, expected, state.version)
            events = accounts.decide(command, state)
            if isinstance(command, accounts.UpdateAccount) and "owner_id" in command.changes:
                await check_owner(
                    RegistryRepository(tx.conn, ctx.tenant_id), command.changes["owner_id"]
                )
            await tx.append(
                wrap(ctx, account_id, state.version, events), expected_version=state.version
            )
        for e in events:
            state = accounts.evolve(state, e)
        return state

    async def update_account(
        self,
        ctx: CommandContext,
        account_id: str,
        changes: dict[str, Any],
        expected: int | None = None,
    ) -> AccountState:
        return await self._account_command(
            ctx, account_id, accounts.UpdateAccount(changes), expected
        )

    async def disable_account(
        self, ctx: CommandContext, account_id: str, reason: str, expected: int | None = None
    ) -> AccountState:
        return await self._account_command(
            ctx, account_id, accounts.DisableAccount(reason), expected
        )

    async def reactivate_account(
        self, ctx: CommandContext, account_id: str, expected: int | None = None
    ) -> AccountState:
        return await self._account_command(ctx, account_id, accounts.ReactivateAccount(), expected)

    async def delete_account(
        self, ctx: CommandContext, account_id: str, expected: int | None = None
    ) -> AccountDeleted:
        """Irreversible: the credential blob row is deleted (crypto-shredded) in the same
        transaction as AccountDeleted, which is returned."""
        async with self.db.transaction() as tx:
            state = await load_account(tx, ctx.tenant_id, account_id)
            check_expected(account_id, expected, state.version)
            [deleted] = accounts.decide(accounts.DeleteAccount(), state)
            assert isinstance(deleted, AccountDeleted)
            await RegistryRepository(tx.conn, ctx.tenant_id).shred_blobs(account_id)
            await tx.append(
                wrap(ctx, account_id, state.version, [deleted]), expected_version=state.version
            )
        return deleted

    # --- employees --------------------------------------------------------------------------
    async def add_employee(self, ctx: CommandContext, cmd: employees.AddEmployee) -> str:
        employee_id = new_id()
        try:
            async with self.db.transaction() as tx:
                state = await load_employee(tx, ctx.tenant_id, employee_id)
                events = employees.decide(cmd, state)
                await self._unique_email(
                    RegistryRepository(tx.conn, ctx.tenant_id), events, employee_id
                )
                await tx.append(wrap(ctx, employee_id, 0, events), expected_version=0)
        except IntegrityError:
            raise self._duplicate_email(cmd.email) from None
        return employee_id

    async def update_employee(
        self,
        ctx: CommandContext,
        employee_id: str,
        changes: dict[str, Any],
        status: str | None = None,
        successor_id: str | None = None,
        expected: int | None = None,
    ) -> EmployeeState:
        """Change fields and/or the status (active <-> offboarded) in one transaction."""
        try:
            async with self.db.transaction() as tx:
                repo = RegistryRepository(tx.conn, ctx.tenant_id)
                start = state = await load_employee(tx, ctx.tenant_id, employee_id)
                check_expected(employee_id, expected, state.version)
                events = employees.decide(employees.UpdateEmployee(changes), state)
                await self._unique_email(repo, events, employee_id)
                for e in events:
                    state = employees.evolve(state, e)
                status_cmd = self._status_command(state, status, successor_id)
                if status_cmd is not None:
                    if successor_id is not None and await repo.employee(successor_id) is None:
                        raise Invalid(
                            f"no employee {successor_id}",
                            code="unknown_successor",
                            details={"field": "successor_id"},
                        )
                    more = employees.decide(status_cmd, state)
                    for e in more:
                        state = employees.evolve(state, e)
                    events = [*events, *more]
                await tx.append(
                    wrap(ctx, employee_id, start.version, events), expected_version=start.version
                )
        except IntegrityError:
            raise self._duplicate_email(str(changes.get("email", ""))) from None
        return state

    @staticmethod
    def _status_command(
        state: EmployeeState, status: str | None, successor_id: str | None
    ) -> employees.Command | None:
        if status is None or status == state.status:
            return None
        if status == "offboarded":
            return employees.OffboardEmployee(successor_id=successor_id)
        if status == "active":
            return employees.ReinstateEmployee()
        raise MailroomError(f"unknown status {status!r}", code="invalid_status")

    async def _unique_email(
        self, repo: RegistryRepository, events: Sequence[Event], employee_id: str
    ) -> None:
        for e in events:
            email = getattr(e, "email", None)
            if email is None:
                continue
            holder = await repo.email_taken(email)
            if holder is not None and holder != employee_id:
                raise self._duplicate_email(email)

    @staticmethod
    def _duplicate_email(email: str) -> Conflict:
        return Conflict(
            f"an employee with email {email} already exists in this tenant", code="duplicate_email"
        )
