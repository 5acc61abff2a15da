"""The authz change log is pruned after its retention, and nothing that checks depend on breaks.

On SQLite and PostgreSQL (``world`` is parametrised): a replica index left behind the pruned
point reloads its tenant from the projection tables and answers ``at_least_as_fresh`` checks
exactly like the live index; later changes are followed along the log again.
"""

# ruff: noqa: F811 -- pytest fixtures imported from test_authz_support are parameters here

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from libs.common.auth import Principal
from services.authz.config import AuthzSettings
from services.authz.index import AuthzIndex
from services.authz.projection import ChangeLogPruned, rebuild
from services.authz.tables import changes
from tests.integration.test_authz_support import (  # noqa: F401 -- fixtures
    World,
    database_url,
    world,
)

pytestmark = pytest.mark.connected
DAY = 24 * 3600.0


async def _log_size(world: World, tenant: str = "acme") -> tuple[int, int | None]:
    async with world.svc.db.read() as conn:
        q = select(func.count(), func.min(changes.c.revision)).where(changes.c.tenant_id == tenant)
        row = (await conn.execute(q)).one()
    return int(row[0]), row[1]


async def test_pruning_keeps_freshness_and_replicas_reload(world: World) -> None:
    assert world.svc.handlers is not None
    handlers = world.svc.handlers
    owner, bob = await world.employee(), await world.employee()
    mb = await world.mailbox(owner)
    other = await world.employee(tenant="globex")
    await world.mailbox(other, tenant="globex")
    bob_p = Principal("acme", bob, "employee")

    replica = AuthzIndex(world.svc.db, poll_s=3600)  # a replica that fell behind
    await replica.load()
    behind = replica.revision("acme")
    for _ in range(3):
        assert (await world.grant(mb, bob, "send")).status_code == 201
        assert (await world.revoke(mb, bob)).status_code == 200
    granted = (await world.grant(mb, bob, "write")).json()["revision"]
    size, first = await _log_size(world)
    assert (size, first) == (granted, 1)

    # Within the retention nothing goes.
    assert await handlers.prune_changes(DAY) == 0
    # Later than the retention everything but each tenant's newest change goes.
    later = datetime.now(UTC) + timedelta(days=2)
    globex_size, _ = await _log_size(world, "globex")
    assert await handlers.prune_changes(DAY, now=later) == granted - 1 + globex_size - 1
    assert await _log_size(world) == (1, granted)
    assert await handlers.prune_changes(DAY, now=later) == 0

    # Freshness is untouched: the revision lives in authz_tenants, not in the log.
    d = await world.check(bob, mb, "write", fresh=granted)
    assert (d.allowed, d.revision) == (True, granted)
    assert (await world.check(bob, mb, "write", fresh=granted + 1)).reason == "stale"

    # The replica cannot follow the log from `behind`: it reloads, then answers like the live one.
    assert behind < granted
    d = await replica.check_fresh(bob_p, mb, "write", at_least_as_fresh=granted)
    assert (d.allowed, d.revision, replica.reloads) == (True, granted, 1)
    assert replica.state("acme").snapshot() == world.index.state("acme").snapshot()

    # Changes after the pruning are followed along the log again (no second reload).
    revoked = (await world.revoke(mb, bob)).json()["revision"]
    d = await replica.check_fresh(bob_p, mb, "write", at_least_as_fresh=revoked)
    assert (d.allowed, d.reason, replica.reloads) == (False, "no_access", 1)
    assert replica.state("acme").snapshot() == world.index.state("acme").snapshot()

    # A rebuild from the change log refuses once the log is no longer whole.
    async with world.svc.db.write() as conn:
        with pytest.raises(ChangeLogPruned):
            await rebuild(conn, "acme")
    assert (await world.check(bob, mb, "read", fresh=revoked)).reason == "no_access"
    assert (await world.check(owner, mb, "configure", fresh=revoked)).allowed


async def test_a_fresh_replica_loads_from_a_pruned_log(world: World) -> None:
    owner, bob = await world.employee(), await world.employee()
    mb = await world.mailbox(owner)
    rev = (await world.grant(mb, bob, "read")).json()["revision"]
    assert world.svc.handlers is not None
    later = datetime.now(UTC) + timedelta(days=30)
    assert await world.svc.handlers.prune_changes(DAY, now=later) == rev - 1
    replica = AuthzIndex(world.svc.db, poll_s=3600)  # a replica started after the pruning
    await replica.load()
    assert replica.revision("acme") == rev and replica.reloads == 0
    d = await replica.check_fresh(Principal("acme", bob, "employee"), mb, "read", rev)
    assert d.allowed


def test_retention_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILROOM_AUTHZ_CHANGE_RETENTION_S", "60")
    monkeypatch.setenv("MAILROOM_AUTHZ_PRUNE_INTERVAL_S", "5")
    monkeypatch.setenv("MAILROOM_AUTHZ_SWEEP_S", "2")
    cfg = AuthzSettings()
    assert (cfg.change_retention_s, cfg.prune_interval_s, cfg.sweep_s) == (60, 5, 2)
