"""Property: the authz projection built incrementally equals one rebuilt from scratch.

For random histories of registry and authz events over two tenants, the SQL projection applied
in random batches (through the real consumer apply, with its offboarding/deletion reactions)
equals: the same history applied in one batch to a fresh database, the projection rebuilt from
its change log, the in-memory state folded from the change log, and (up to revision numbers)
the pure fold of the history itself.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.events import (
    AccessExpired,
    AccessGranted,
    AccessRevoked,
    AccountAdded,
    AccountDeleted,
    AccountDisabled,
    AccountReactivated,
    AccountSettings,
    AccountUpdated,
    CommandContext,
    CredentialRef,
    CredentialRotated,
    EmployeeAdded,
    EmployeeOffboarded,
    EmployeeReinstated,
    EmployeeUpdated,
    Envelope,
    Event,
    MailboxHandedOver,
)
from libs.common.store.database import Database
from services.authz import domain, tables
from services.authz.projection import AuthzProjector, apply_events, rebuild, registry_projection
from services.authz.repository import AuthzRepository

TENANTS = ("acme", "globex")
PEOPLE = ("p1", "p2", "p3")
MAILBOXES = ("m1", "m2", "m3")
DEPTS = ("sales", "support")
EXPIRIES = (None, "2025-01-01T00:00:00Z", "2030-01-01T00:00:00.5Z")

person = st.sampled_from(PEOPLE)
maybe_person = st.none() | person
dept = st.none() | st.sampled_from(DEPTS)
level = st.sampled_from(("read", "write", "send", "configure"))
grantee = st.one_of(
    st.tuples(st.just("employee"), person), st.tuples(st.just("department"), st.sampled_from(DEPTS))
)


def _emp(cls: Any) -> st.SearchStrategy[tuple[Event, str]]:
    return st.builds(lambda p, d: (cls(name=p, email=f"{p}@x.org", department=d), p), person, dept)


def _mb(fn: Any, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Event, str]]:
    return st.builds(lambda m, *a: (fn(*a), m), st.sampled_from(MAILBOXES), *args)


EVENTS: st.SearchStrategy[tuple[Event, str]] = st.one_of(
    _emp(EmployeeAdded),
    _emp(EmployeeUpdated),
    st.builds(
        lambda p, s: (EmployeeOffboarded(successor_id=s, mailbox_ids=list(MAILBOXES)), p),
        person,
        maybe_person,
    ),
    st.builds(lambda p: (EmployeeReinstated(), p), person),
    _mb(
        lambda o, sh: AccountAdded(
            address="a@x.org", protocol="imap", owner_id=o, ownership=sh, settings=AccountSettings()
        ),
        maybe_person,
        st.sampled_from(("personal", "shared")),
    ),
    _mb(
        lambda o, ch: AccountUpdated(changed=ch, owner_id=o, settings=AccountSettings()),
        maybe_person,
        st.lists(st.sampled_from(("owner_id", "ownership", "folders")), max_size=2),
    ),
    _mb(lambda: AccountDisabled()),
    _mb(lambda: AccountReactivated()),
    _mb(lambda: AccountDeleted(address="a@x.org")),
    _mb(lambda o: MailboxHandedOver(from_owner_id=None, to_owner_id=o), person),
    _mb(lambda: CredentialRotated(credential=CredentialRef(blob_id="b", version=2, kek_version=1))),
    _mb(
        lambda g, lv, ob, ex: AccessGranted(
            grantee_kind=g[0], grantee_id=g[1], level=lv, on_behalf=ob, expires_at=ex
        ),
        grantee,
        level,
        st.booleans(),
        st.sampled_from(EXPIRIES),
    ),
    _mb(lambda g: AccessRevoked(grantee_kind=g[0], grantee_id=g[1]), grantee),
    _mb(lambda g: AccessExpired(grantee_kind=g[0], grantee_id=g[1]), grantee),
)

HISTORY = st.lists(st.tuples(st.sampled_from(TENANTS), EVENTS), min_size=4, max_size=40)


def envelopes(history: Sequence[tuple[str, tuple[Event, str]]], run: int = 0) -> list[Envelope]:
    """Envelopes of a history; tenant names get the run number (each example its own tenants)."""
    return [
        Envelope.wrap(
            ev, CommandContext(f"{t}{run}", "admin:test"), aggregate_id=agg, aggregate_version=1
        )
        for t, (ev, agg) in history
    ]


async def feed(db: Database, events: Sequence[Envelope], cuts: Sequence[int]) -> None:
    """Apply like the service: registry events via the consumer, authz ones via the projector."""
    consumer = registry_projection(db.store)
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        async with db.write() as conn:
            run: list[Envelope] = []
            for env in events[lo:hi]:
                if run and run[-1].service != env.service:
                    await _apply(consumer.apply, conn, run)
                    run = []
                run.append(env)
            await _apply(consumer.apply, conn, run)


async def _apply(consumer_apply: Any, conn: Any, run: list[Envelope]) -> None:
    if run and run[0].service == "registry":
        await consumer_apply(conn, run)
    elif run:
        await apply_events(conn, run)


async def snapshot(db: Database, tenant: str) -> dict[str, Any]:
    async with db.read() as conn:
        return (await AuthzRepository(conn, tenant).load_state()).snapshot()


async def change_log(db: Database, tenant: str) -> list[Envelope]:
    async with db.read() as conn:
        rows = await AuthzRepository(conn, tenant).changes_after(0, limit=10_000)
    return [Envelope.model_validate_json(raw) for _, raw in rows]


def without_revisions(snap: dict[str, Any]) -> dict[str, Any]:
    return {**snap, "revision": None, "grants": [g[:-1] for g in snap["grants"]]}


@dataclass
class World:
    """One event loop and two databases for every example (tenants differ per example)."""

    loop: asyncio.AbstractEventLoop
    incremental: Database
    one_batch: Database
    runs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("authz_projection")
    loop = asyncio.new_event_loop()
    dbs = [
        Database(f"sqlite+aiosqlite:///{tmp / n}.db", tables.metadata, projector=AuthzProjector())
        for n in ("incremental", "one_batch")
    ]
    for db in dbs:
        loop.run_until_complete(db.create_all())
    yield World(loop, *dbs)
    for db in dbs:
        loop.run_until_complete(db.dispose())
    loop.close()


async def scenario(w: World, history: list[tuple[str, tuple[Event, str]]], cuts: list[int]) -> None:
    run = next(w.runs)
    events = envelopes(history, run)
    await feed(w.incremental, events, cuts)
    await feed(w.one_batch, events, [])
    for name in TENANTS:
        tenant = f"{name}{run}"
        inc = await snapshot(w.incremental, tenant)
        assert inc == await snapshot(w.one_batch, tenant)
        folded = domain.TenantState(tenant)
        for env in await change_log(w.incremental, tenant):
            assert folded.apply_event(env.event(), env.aggregate_id)
        assert folded.snapshot() == inc
        pure = domain.build_state(tenant, [e for t, e in history if t == name])
        assert without_revisions(pure.snapshot()) == without_revisions(inc)
        async with w.incremental.write() as conn:
            assert await rebuild(conn, tenant) == inc["revision"]
        assert await snapshot(w.incremental, tenant) == inc


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(history=HISTORY, cuts=st.lists(st.integers(0, 40), max_size=6))
def test_incremental_projection_equals_rebuild(
    world: World, history: list[tuple[str, tuple[Event, str]]], cuts: list[int]
) -> None:
    world.loop.run_until_complete(scenario(world, history, cuts))


def test_offboarding_reaction_appends_one_revocation_per_grant(world: World) -> None:
    granted = [
        ("acme", (AccessGranted(grantee_kind="employee", grantee_id="p1", level="read"), m))
        for m in MAILBOXES
    ]
    history = [*granted, ("acme", (EmployeeOffboarded(), "p1"))]
    run = next(world.runs)
    db = world.one_batch

    async def check() -> None:
        envs = envelopes(history, run)
        await feed(db, envs, [])
        log = await change_log(db, f"acme{run}")
        names = [e.event_name for e in log]
        assert names == ["AccessGranted"] * 3 + ["EmployeeOffboarded"] + ["AccessRevoked"] * 3
        async with db.read() as conn:
            stored = await db.store.load(conn, f"acme{run}", "m2")
        revoked = [e for e in stored if e.tenant_id == f"acme{run}"]
        assert [e.data["reason"] for e in revoked] == ["offboarded"]
        assert revoked[0].data["revision"] == 6 and revoked[0].actor == "service:authz"
        assert revoked[0].causation_id == envs[-1].id
        assert (await snapshot(db, f"acme{run}"))["grants"] == []

    world.loop.run_until_complete(check())


def test_tenants_with_the_same_ids_never_touch(world: World) -> None:
    """Every kind of op in one tenant, next to the same ids in another (isolation)."""
    added = AccountAdded(
        address="a@x.org", protocol="imap", owner_id="p1", settings=AccountSettings()
    )
    grant = AccessGranted(grantee_kind="employee", grantee_id="p1", level="send")
    dept = AccessGranted(grantee_kind="department", grantee_id="sales", level="read")
    both = [(added, "m1"), (added, "m2"), (grant, "m1"), (grant, "m2"), (dept, "m1")]
    both += [(EmployeeAdded(name="p1", email="p1@x.org", department="sales"), "p1")]
    history = [(t, e) for e in both for t in TENANTS]
    only_acme = [
        (EmployeeOffboarded(successor_id="p2"), "p1"),
        (AccountDeleted(address="a@x.org"), "m2"),
        (AccountDisabled(), "m1"),
        (MailboxHandedOver(from_owner_id="p2", to_owner_id="p3"), "m1"),
        (AccessRevoked(grantee_kind="department", grantee_id="sales"), "m1"),
        (EmployeeUpdated(name="p1", email="p1@x.org", department="support"), "p1"),
    ]
    history += [("acme", e) for e in only_acme]
    world.loop.run_until_complete(scenario(world, history, [3, 9]))
    run = next(world.runs) - 1
    globex = world.loop.run_until_complete(snapshot(world.incremental, f"globex{run}"))
    assert globex["mailboxes"] == [
        ("m1", "p1", "personal", False, False),
        ("m2", "p1", "personal", False, False),
    ]
    assert len(globex["grants"]) == 3 and globex["employees"] == [("p1", "sales", False)]
