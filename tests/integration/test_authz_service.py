"""The authz service on a real nats-server: grants over HTTP, checks over NATS and HTTP.

Registry events are published into the stream by the test, as the registry service would.
Every test runs on SQLite and on PostgreSQL (``MAILROOM_TEST_PG_URL``; one database per service).
"""

# ruff: noqa: F811 -- pytest fixtures imported from test_authz_support are parameters here

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.common.auth import Principal
from libs.common.authz_client import AuthzClient
from libs.common.errors import Forbidden
from libs.common.events import (
    AccountDeleted,
    AccountDisabled,
    EmployeeOffboarded,
    EmployeeReinstated,
    MailboxHandedOver,
)
from services.authz.index import AuthzIndex
from tests.integration.test_authz_support import (  # noqa: F401 -- fixtures
    World,
    database_url,
    world,
)
from tests.support.stack import wait_until

pytestmark = pytest.mark.connected


async def test_grants_over_http_checks_over_nats_and_http(world: World) -> None:
    alice, bob, carol = (
        await world.employee("sales"),
        await world.employee("sales"),
        await world.employee(),
    )
    mb = await world.mailbox(alice)

    r = await world.grant(mb, bob, "write")
    assert r.status_code == 201 and r.json()["changed"] is True
    rev = r.json()["revision"]
    again = await world.grant(mb, bob, "write")  # idempotent: nothing changes
    assert again.status_code == 200 and again.json() == {**r.json(), "changed": False}
    r = await world.grant(mb, carol, "send", by=alice, role="employee", on_behalf=True)
    assert r.status_code == 201 and r.json()["revision"] > rev

    d = await world.check(bob, mb, "move", fresh=rev)
    assert (d.allowed, d.reason, d.level) == (True, "grant", "write")
    d = await world.check(bob, mb, "send")
    assert (d.allowed, d.reason) == (False, "insufficient_level")
    d = await world.check(carol, mb, "send")
    assert (d.allowed, d.reason, d.on_behalf) == (True, "grant", True)
    d = await world.check(alice, mb, "configure")
    assert (d.allowed, d.reason) == (True, "owner")
    assert world.client.latest_revision("acme") == r.json()["revision"]

    r = await world.stack.call(
        "POST", "/v1/check", json={"mailbox_id": mb, "action": "flag"}, subject=bob, role="employee"
    )
    assert r.status_code == 200 and r.json()["allowed"] and r.json()["grantee"] == f"employee:{bob}"
    body = {"mailbox_id": mb, "action": "read", "principal": {"subject": alice}}
    r = await world.stack.call("POST", "/v1/check", json=body, subject=bob, role="employee")
    assert r.status_code == 403  # employees check only themselves
    r = await world.stack.call("POST", "/v1/check", json=body)  # an admin checks anyone
    assert r.json()["reason"] == "owner"

    # Departments: a grant to "sales" reaches alice and bob.
    shared = await world.mailbox(None)
    r = await world.grant(shared, "sales", "read", kind="department")
    assert r.status_code == 201
    assert (await world.check(bob, shared, "read")).reason == "department"
    access = (await world.stack.call("GET", f"/v1/mailboxes/{shared}/access")).json()
    dept = next(e for e in access["entries"] if e["source"] == "department")
    assert sorted(dept["members"]) == sorted([alice, bob])
    assert access["entries"][0] == {**access["entries"][0], "source": "admin", "level": "configure"}

    access = await world.stack.call(
        "GET", f"/v1/mailboxes/{mb}/access", subject=alice, role="employee"
    )
    got = {(e["grantee_id"], e["level"], e["source"]) for e in access.json()["entries"]}
    assert got == {
        ("admin", "configure", "admin"),
        (alice, "configure", "owner"),
        (bob, "write", "grant"),
        (carol, "send", "grant"),
    }
    r = await world.stack.call("GET", f"/v1/mailboxes/{mb}/access", subject=bob, role="employee")
    assert r.status_code == 403
    mine = await world.stack.call(
        "GET", f"/v1/employees/{bob}/access", subject=bob, role="employee"
    )
    assert mine.status_code == 200, mine.text
    assert {(m["mailbox_id"], m["level"], m["source"]) for m in mine.json()["mailboxes"]} == {
        (mb, "write", "grant"),
        (shared, "read", "department"),
    }
    r = await world.stack.call("GET", f"/v1/employees/{alice}/access", subject=bob, role="employee")
    assert r.status_code == 403

    r = await world.grant(mb, bob, "read", on_behalf=True)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_grant"
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = await world.grant(mb, bob, "read", expires_at=past)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_expiry"


async def test_revoke_then_fresh_check_is_denied_every_time(world: World) -> None:
    owner, bob = await world.employee(), await world.employee()
    mb = await world.mailbox(owner)
    for _ in range(100):
        granted = (await world.grant(mb, bob, "send")).json()["revision"]
        assert (await world.check(bob, mb, "send", fresh=granted)).allowed
        revoked = await world.revoke(mb, bob)
        assert revoked.status_code == 200 and revoked.json()["changed"] is True
        rev = revoked.json()["revision"]
        assert rev == granted + 1
        d = await world.check(bob, mb, "send", fresh=rev)
        assert (d.allowed, d.reason) == (False, "no_access"), d
        assert d.revision >= rev
    again = await world.revoke(mb, bob)
    assert again.json()["changed"] is False
    d = await world.check(bob, mb, "read", fresh=rev + 1000)
    assert (d.allowed, d.reason) == (False, "stale")
    owner_d = await world.check(owner, mb, "read", fresh=rev + 1000)
    assert owner_d.reason == "stale"  # even the owner: an answer from the past is no answer


async def test_expiry_is_exact_and_the_sweep_records_it(world: World) -> None:
    owner, bob = await world.employee(), await world.employee()
    mb = await world.mailbox(owner)
    expires = datetime.now(UTC) + timedelta(seconds=1)
    r = await world.grant(mb, bob, "write", expires_at=expires.isoformat())
    assert r.status_code == 201
    assert (await world.check(bob, mb, "write")).allowed
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.01)
    d = await world.check(bob, mb, "write")  # no sweep has run: the check itself knows
    assert (d.allowed, d.reason) == (False, "expired")
    assert world.svc.handlers is not None
    assert await world.svc.handlers.sweep_expired() == 1
    assert (await world.check(bob, mb, "read")).reason == "no_access"

    async def expired_in_audit() -> list[dict[str, Any]]:
        return await world.audit("AccessExpired")

    events = await wait_until(expired_in_audit)
    assert events[0]["data"]["grantee_id"] == bob and events[0]["aggregate_id"] == mb


async def test_offboarding_revokes_hands_over_and_shuts_out(world: World) -> None:
    dave, frank, owner = (
        await world.employee("sales"),
        await world.employee(),
        await world.employee(),
    )
    mb_dave, other, third = (
        await world.mailbox(dave),
        await world.mailbox(owner),
        await world.mailbox(owner),
    )
    for mb in (other, third):
        assert (await world.grant(mb, dave, "send")).status_code == 201
    r = await world.stack.call("GET", f"/v1/employees/{dave}/access", subject=dave, role="employee")
    assert len(r.json()["mailboxes"]) == 3

    await world.registry(
        (EmployeeOffboarded(successor_id=frank, mailbox_ids=[mb_dave]), dave),
        (MailboxHandedOver(from_owner_id=dave, to_owner_id=frank), mb_dave),
    )
    for mb in (mb_dave, other):
        d = await world.check(dave, mb, "read")
        assert (d.allowed, d.reason) == (False, "offboarded")
    d = await world.check(frank, mb_dave, "configure")
    assert (d.allowed, d.reason) == (True, "owner")
    r = await world.stack.call("GET", f"/v1/employees/{dave}/access", subject=dave, role="employee")
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"

    async def revoked_in_audit() -> list[dict[str, Any]] | None:
        found = await world.audit("AccessRevoked")
        return found if len(found) == 2 else None

    revoked = await wait_until(revoked_in_audit)
    assert {e["aggregate_id"] for e in revoked} == {other, third}
    assert {e["data"]["reason"] for e in revoked} == {"offboarded"}
    assert all(e["actor"] == "service:authz" for e in revoked)
    r = await world.grant(other, dave, "read")
    assert r.status_code == 409 and r.json()["error"]["code"] == "grantee_offboarded"

    await world.registry((EmployeeReinstated(), dave))
    for mb in (mb_dave, other, third):
        d = await world.check(dave, mb, "read")
        assert (d.allowed, d.reason) == (False, "no_access")  # nothing comes back by itself


async def test_disabled_then_deleted_account(world: World) -> None:
    owner, bob = await world.employee(), await world.employee()
    mb = await world.mailbox(owner)
    await world.grant(mb, bob, "send")
    await world.registry((AccountDisabled(reason="auth failures"), mb))
    assert (await world.check(bob, mb, "read")).allowed
    assert (await world.check(bob, mb, "send")).reason == "mailbox_disabled"
    assert (await world.check(owner, mb, "write")).reason == "mailbox_disabled"
    await world.registry((AccountDeleted(address="m@x.org"), mb))
    assert (await world.check(bob, mb, "read")).reason == "mailbox_deleted"
    assert (await world.check("root", mb, "read", role="admin")).reason == "mailbox_deleted"
    r = await world.stack.call("GET", f"/v1/mailboxes/{mb}/access")
    assert r.status_code == 404
    assert world.index.state("acme").grants.get(mb) is None

    async def revoked() -> list[dict[str, Any]]:
        return [e for e in await world.audit("AccessRevoked") if e["aggregate_id"] == mb]

    assert (await wait_until(revoked))[0]["data"]["reason"] == "mailbox_deleted"


async def test_cross_tenant_probes_get_nothing(world: World) -> None:
    alice = await world.employee()
    mb = await world.mailbox(alice)
    await world.grant(mb, "bob", "read")
    other = await world.employee(tenant="globex")
    await world.mailbox(other, tenant="globex")

    for role in ("admin", "employee"):
        d = await world.check(alice, mb, "read", tenant="globex", role=role)  # type: ignore[arg-type]
        assert (d.allowed, d.reason) == (False, "unknown_mailbox")
    body = {"grantee_kind": "employee", "grantee_id": other, "level": "read"}
    r = await world.stack.call("POST", f"/v1/mailboxes/{mb}/grants", json=body, tenant="globex")
    assert r.status_code == 404 and r.json()["error"]["code"] == "mailbox_not_found"
    r = await world.stack.call("DELETE", f"/v1/mailboxes/{mb}/grants/employee/bob", tenant="globex")
    assert r.status_code == 404
    r = await world.stack.call("GET", f"/v1/mailboxes/{mb}/access", tenant="globex")
    assert r.status_code == 404
    r = await world.stack.call("GET", f"/v1/employees/{alice}/access", tenant="globex")
    assert r.status_code == 200 and r.json()["mailboxes"] == []
    r = await world.stack.call(
        "POST", "/v1/check", json={"mailbox_id": mb, "action": "read"}, tenant="globex"
    )
    assert r.json()["reason"] == "unknown_mailbox"
    assert await world.audit("AccessGranted", tenant="globex") == []
    assert len(await wait_until(lambda: world.audit("AccessGranted"))) == 1


async def test_refused_grant_change_is_forbidden_and_audited(world: World) -> None:
    owner, bob, carol = await world.employee(), await world.employee(), await world.employee()
    mb = await world.mailbox(owner)
    await world.grant(mb, bob, "send")
    r = await world.grant(mb, carol, "read", by=bob, role="employee")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await world.revoke(mb, owner, subject=carol, role="employee")
    assert r.status_code == 403
    r = await world.revoke(mb, bob, subject=bob, role="employee")  # leaving is always allowed
    assert r.status_code == 200 and r.json()["changed"] is True

    async def denied() -> list[dict[str, Any]] | None:
        found = await world.audit("AccessDenied")
        return found if len(found) == 2 else None

    found = await wait_until(denied)
    assert [(e["data"]["principal"], e["data"]["action"]) for e in found] == [
        (f"employee:{bob}", "grant"),
        (f"employee:{carol}", "revoke"),
    ]
    assert all("configure" in e["data"]["reason"] for e in found)
    assert (await world.check(carol, mb, "read")).reason == "no_access"


async def test_client_require_and_malformed_requests(world: World) -> None:
    owner = await world.employee()
    mb = await world.mailbox(owner)
    p = Principal("acme", owner, "employee")
    assert (await world.client.require(p, mb, "send")).reason == "owner"
    with pytest.raises(Forbidden) as err:
        await world.client.require(Principal("acme", "nobody", "employee"), mb, "read")
    assert err.value.code == "forbidden" and err.value.details["reason"] == "no_access"
    svc = Principal("acme", "bot", "service", scopes=frozenset({"events:read"}))
    assert (await world.client.check(svc, mb, "read")).reason == "service_scope"
    assert (await world.client.check(svc, mb, "write")).allowed is False
    nc: Any = world.stack.host.runtime.nc
    reply = await nc.request("mailroom-rpc.authz.check", b"{not json", timeout=2)
    assert json.loads(reply.data)["reason"] == "bad_request"
    reply = await nc.request("mailroom-rpc.authz.check", b'{"mailbox_id": "x"}', timeout=2)
    assert json.loads(reply.data)["allowed"] is False
    silent = AuthzClient(nc, subject="mailroom-rpc.nobody.check", timeout=0.2)
    d = await silent.check(p, mb, "read")
    assert (d.allowed, d.reason) == (False, "unavailable")


async def test_another_replica_honours_at_least_as_fresh(world: World) -> None:
    """A second index on the same database (another replica) catches up within the wait."""
    owner, bob = await world.employee(), await world.employee()
    mb = await world.mailbox(owner)
    replica = AuthzIndex(world.svc.db, poll_s=3600)  # never polls: only on-demand catch-up
    await replica.load()
    bob_p = Principal("acme", bob, "employee")
    for _ in range(5):
        granted = (await world.grant(mb, bob, "write")).json()["revision"]
        assert replica.revision("acme") < granted
        d = await replica.check_fresh(bob_p, mb, "write", at_least_as_fresh=granted)
        assert (d.allowed, d.revision) == (True, granted)
        revoked = (await world.revoke(mb, bob)).json()["revision"]
        assert replica.check(bob_p, mb, "write").allowed  # stale without the token ...
        d = await replica.check_fresh(bob_p, mb, "write", at_least_as_fresh=revoked)
        assert (d.allowed, d.reason) == (False, "no_access")  # ... never with it
    assert replica.state("acme").snapshot() == world.index.state("acme").snapshot()
