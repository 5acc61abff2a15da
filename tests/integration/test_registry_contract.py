"""The registry's handlers and repository contract: SQLite and PostgreSQL pass the same tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from libs.common.errors import Conflict, MailroomError, NotFound
from libs.common.events import CommandContext
from libs.common.store.database import Database
from libs.common.store.eventstore import ConcurrencyError
from services.registry import tables
from services.registry.domain import accounts, employees
from services.registry.handlers import Handlers, Idempotency, load_account
from services.registry.handlers_credentials import CredentialHandlers, state_from_row
from services.registry.projection import RegistryProjector
from services.registry.repository import AccountFilter, RegistryRepository
from services.registry.repository_bulk import IN_CHUNK, BulkRepository
from services.registry.settings import KeyStore, RegistrySettings, load_keystore
from services.registry.validation import Invalid, ServerSpec

pytestmark = pytest.mark.connected
ACME = CommandContext("acme", "admin:test")
GLOBEX = CommandContext("globex", "admin:test")


def add(address: str, **over: Any) -> accounts.AddAccount:
    values = {
        "incoming": ServerSpec("imap.example.com", 993, "ssl"),
        "outgoing": ServerSpec("smtp.example.com", 465, "ssl"),
        **over.pop("values", {}),
    }
    return accounts.AddAccount(address=address, protocol="imap", values=values, **over)


class RegistryContract:
    """Subclasses provide the ``url`` fixture for their backend."""

    @pytest.fixture
    async def db(self, url: str) -> AsyncIterator[Database]:
        database = Database(url, tables.metadata, projector=RegistryProjector())
        await database.create_all()
        yield database
        await database.dispose()

    @pytest.fixture
    def keys(self, tmp_path: Path) -> KeyStore:
        from libs.common.settings import Settings

        return load_keystore(Settings(data_dir=tmp_path / "keys"), environ={})

    @pytest.fixture
    def h(self, db: Database, keys: KeyStore) -> Handlers:
        return Handlers(db, keys, RegistrySettings(rotate_batch=2))

    @pytest.fixture
    def ch(self, h: Handlers) -> CredentialHandlers:
        return CredentialHandlers(h)

    async def count(self, db: Database, table: Any) -> int:
        async with db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)

    async def repo_call(self, db: Database, tenant: str, method: str, *args: Any, **kw: Any) -> Any:
        async with db.read() as conn:
            return await getattr(RegistryRepository(conn, tenant), method)(*args, **kw)

    async def test_add_projects_the_account_and_seals_the_secret(
        self, h: Handlers, db: Database
    ) -> None:
        account_id, replayed = await h.add_account(ACME, add("a@example.com"), SecretStr("pw-one"))
        row = await self.repo_call(db, "acme", "account", account_id)
        assert not replayed and row.address == "a@example.com" and row.status == "active"
        assert row.has_credential and row.credential_version == 1 and row.version == 1
        async with db.read() as conn:
            blob = (await conn.execute(select(tables.credential_blobs.c.blob))).scalar_one()
        assert b"pw-one" not in bytes(blob)
        assert await self.repo_call(db, "globex", "account", account_id) is None

    async def test_duplicate_address_is_refused_without_a_partial_write(
        self, h: Handlers, db: Database
    ) -> None:
        await h.add_account(ACME, add("dup@example.com"), SecretStr("x"))
        before = (
            await self.count(db, db.tables.events),
            await self.count(db, tables.credential_blobs),
        )
        with pytest.raises(Conflict) as info:
            await h.add_account(ACME, add("DUP@example.com"), SecretStr("y"))
        assert info.value.code == "duplicate_address"
        with pytest.raises(Invalid):  # an unknown owner also writes nothing
            await h.add_account(ACME, add("new@example.com", owner_id="nobody"), SecretStr("z"))
        after = (
            await self.count(db, db.tables.events),
            await self.count(db, tables.credential_blobs),
        )
        assert after == before
        await h.add_account(GLOBEX, add("dup@example.com"), None)  # other tenant: fine

    async def test_concurrent_creates_of_one_address_make_one_account(
        self, h: Handlers, db: Database
    ) -> None:
        results = await asyncio.gather(
            *(h.add_account(ACME, add("race@example.com"), SecretStr("p")) for _ in range(5)),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, tuple)]
        assert len(ok) == 1, results
        assert all(
            isinstance(r, Conflict) and r.code == "duplicate_address"
            for r in results
            if not isinstance(r, tuple)
        )
        assert await self.count(db, tables.accounts) == 1
        assert await self.count(db, tables.credential_blobs) == 1

    async def test_idempotency_key_replays_even_when_racing(
        self, h: Handlers, db: Database
    ) -> None:
        idem = Idempotency("key-1", "fp")
        results = await asyncio.gather(
            *(h.add_account(ACME, add("idem@example.com"), SecretStr("p"), idem) for _ in range(5))
        )
        assert len({account_id for account_id, _ in results}) == 1
        assert sum(1 for _, replayed in results if not replayed) == 1
        with pytest.raises(Invalid) as info:
            await h.add_account(ACME, add("idem@example.com"), None, Idempotency("key-1", "x"))
        assert info.value.code == "idempotency_key_reused"
        other, replayed = await h.add_account(GLOBEX, add("idem@example.com"), None, idem)
        assert not replayed and other != results[0][0]
        assert await self.count(db, tables.accounts) == 2

    async def test_list_filters_search_and_pages(self, h: Handlers, db: Database) -> None:
        await h.add_employee(ACME, employees.AddEmployee("Owner", "owner@example.com"))
        [owner] = await self.repo_call(
            db, "acme", "employees", status=None, department=None, q=None, after=None, limit=10
        )
        ids = []
        for i in range(5):
            account_id, _ = await h.add_account(
                ACME,
                add(
                    f"user{i}@example.com",
                    owner_id=owner.id if i % 2 else None,
                    values={"display_name": f"User_{i}"},
                ),
                None,
            )
            ids.append(account_id)
        await h.add_account(GLOBEX, add("user9@example.com"), None)
        await h.disable_account(ACME, ids[0], "left")
        page = await self.repo_call(db, "acme", "accounts", AccountFilter(), None, 2)
        page2 = await self.repo_call(db, "acme", "accounts", AccountFilter(), page[-1].id, 10)
        assert [r.id for r in page + page2] == ids
        f = AccountFilter(status="disabled")
        assert [r.id for r in await self.repo_call(db, "acme", "accounts", f, None, 9)] == ids[:1]
        f = AccountFilter(owner_id=owner.id)
        assert len(await self.repo_call(db, "acme", "accounts", f, None, 9)) == 2
        f = AccountFilter(q="USER3")
        assert [r.id for r in await self.repo_call(db, "acme", "accounts", f, None, 9)] == [ids[3]]
        f = AccountFilter(q="r_2")  # "_" is literal, not a wildcard
        assert [r.id for r in await self.repo_call(db, "acme", "accounts", f, None, 9)] == [ids[2]]
        f = AccountFilter(protocol="pop3")
        assert await self.repo_call(db, "acme", "accounts", f, None, 9) == []

    async def test_delete_shreds_the_blob_and_frees_the_address(
        self, h: Handlers, db: Database
    ) -> None:
        account_id, _ = await h.add_account(ACME, add("gone@example.com"), SecretStr("p"))
        await h.disable_account(ACME, account_id, "")
        await h.delete_account(ACME, account_id)
        assert await self.count(db, tables.credential_blobs) == 0
        assert await self.repo_call(db, "acme", "account", account_id) is None
        with pytest.raises(NotFound) as info:
            await h.reactivate_account(ACME, account_id)
        assert info.value.code == "account_deleted"
        again, _ = await h.add_account(ACME, add("gone@example.com"), None)
        assert again != account_id

    async def test_expected_version_guards_against_lost_updates(self, h: Handlers) -> None:
        account_id, _ = await h.add_account(ACME, add("v@example.com"), None)
        await h.update_account(ACME, account_id, {"display_name": "one"}, expected=1)
        with pytest.raises(ConcurrencyError):
            await h.update_account(ACME, account_id, {"display_name": "two"}, expected=1)

    async def test_projection_row_is_the_folded_state(
        self, h: Handlers, ch: CredentialHandlers, db: Database
    ) -> None:
        account_id, _ = await h.add_account(ACME, add("p@example.com"), SecretStr("a"))
        await h.update_account(ACME, account_id, {"forwarding": ["f@example.com"]})
        await ch.replace_credential(ACME, account_id, SecretStr("b"))
        await h.disable_account(ACME, account_id, "")
        async with db.transaction() as tx:
            folded = await load_account(tx, "acme", account_id)
        row = await self.repo_call(db, "acme", "account", account_id)
        assert state_from_row(row) == folded

    async def test_kek_rotation_rewraps_and_retire_is_guarded(
        self, h: Handlers, ch: CredentialHandlers, db: Database
    ) -> None:
        ids = [
            (await h.add_account(ACME, add(f"k{i}@example.com"), SecretStr(f"pw{i}")))[0]
            for i in range(3)
        ]
        await h.add_account(GLOBEX, add("k@example.com"), SecretStr("g"))
        await h.disable_account(ACME, ids[0], "")
        with pytest.raises(Conflict) as info:
            await ch.retire_key(1)
        assert info.value.code == "kek_active"
        result = await ch.rotate_keys(ACME, generate=True)
        assert (result.active_version, result.rewrapped, result.failed) == (2, 3, [])
        assert await ch.key_usage("acme") == {2: 3}
        with pytest.raises(Conflict) as info:  # globex still has a blob under version 1
            await ch.retire_key(1)
        assert info.value.code == "kek_in_use"
        assert (await ch.rotate_keys(GLOBEX, generate=False)).rewrapped == 1
        assert (await ch.retire_key(1)).removed_from_keyring
        with pytest.raises(NotFound):
            await ch.retire_key(1)
        await h.reactivate_account(ACME, ids[0])
        for i, account_id in enumerate(ids):
            grant = await ch.lease("acme", account_id, "sync", "after rotation")
            assert grant.secret.get_secret_value() == f"pw{i}"
        state = state_from_row(await self.repo_call(db, "acme", "account", ids[1]))
        assert state.credential is not None and state.credential.kek_version == 2

    async def test_concurrent_leases_are_each_audited(
        self, h: Handlers, ch: CredentialHandlers, db: Database
    ) -> None:
        account_id, _ = await h.add_account(ACME, add("l@example.com"), SecretStr("s"))
        grants = await asyncio.gather(
            *(ch.lease("acme", account_id, "sync", f"p{i}") for i in range(8))
        )
        assert {g.secret.get_secret_value() for g in grants} == {"s"}
        async with db.transaction() as tx:
            history = await tx.load("acme", account_id)
        assert [e.aggregate_version for e in history] == list(range(1, 10))
        assert sum(e.event_name == "CredentialAccessed" for e in history) == 8
        with pytest.raises(NotFound):
            await ch.lease("globex", account_id, "sync", "other tenant")

    async def test_employees_unique_email_and_departments(self, h: Handlers, db: Database) -> None:
        a = await h.add_employee(ACME, employees.AddEmployee("A", "a@example.com", "", "Sales"))
        b = await h.add_employee(ACME, employees.AddEmployee("B", "b@example.com", "", "sales"))
        with pytest.raises(Conflict) as info:
            await h.add_employee(ACME, employees.AddEmployee("C", "A@example.com"))
        assert info.value.code == "duplicate_email"
        with pytest.raises(Conflict):
            await h.update_employee(ACME, b, {"email": "a@example.com"})
        await h.add_employee(GLOBEX, employees.AddEmployee("A", "a@example.com"))
        [(name, members)] = await self.repo_call(db, "acme", "departments")
        assert name.lower() == "sales" and {m.id for m in members} == {a, b}
        await h.update_employee(ACME, a, {"department": "Support"}, status="offboarded")
        await h.update_employee(ACME, b, {"department": None})
        deps = await self.repo_call(db, "acme", "departments")
        assert [(n, [m.id for m in ms]) for n, ms in deps] == [("Support", [a])]
        assert (await self.repo_call(db, "acme", "employee", a)).status == "offboarded"
        with pytest.raises(MailroomError) as err:
            await h.update_employee(ACME, b, {}, status="offboarded", successor_id="nobody")
        assert err.value.code == "unknown_successor"

    async def test_bulk_lookups_find_exactly_the_given_keys(
        self, h: Handlers, db: Database
    ) -> None:
        """The import's set-at-a-time look-ups (an index probe per key on PostgreSQL, in chunks
        of ``IN_CHUNK``): the tenant's own rows for the keys given, nothing else."""
        await h.add_account(ACME, add("a@example.com"), SecretStr("x"))
        await h.add_account(ACME, add("b@example.com"), SecretStr("x"))
        await h.add_account(GLOBEX, add("c@example.com"), SecretStr("x"))
        e = await h.add_employee(ACME, employees.AddEmployee("E", "e@example.com"))
        many = [f"n{i}@example.com" for i in range(IN_CHUNK + 10)]
        async with db.read() as conn:
            repo = BulkRepository(conn, "acme")
            found = await repo.accounts_by_key(
                ["a@example.com", "c@example.com", *many, "a@example.com"]
            )
            people = await repo.employees_by_key(["e@example.com", "a@example.com"])
        assert set(found) == {"a@example.com"} and found["a@example.com"].address == "a@example.com"
        assert set(people) == {"e@example.com"} and people["e@example.com"].id == e


class TestSQLiteRegistry(RegistryContract):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"


@pytest.mark.postgres
class TestPostgresRegistry(RegistryContract):
    @pytest.fixture
    def url(self, pg_url: str) -> str:
        return pg_url
