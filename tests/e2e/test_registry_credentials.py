"""Credentials end to end: replace, KEK rotation and retirement, and the lease RPC on NATS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from libs.common.leases import LEASE_SUBJECT, LeaseRefused, lease_credential
from libs.common.nats import connect
from services.registry.keyring import KeyRing
from services.registry.settings import EMBEDDED_KEK_FILE
from services.registry.tables import credential_blobs
from tests.support import registry as support
from tests.support.registry import (
    audit_types,
    blob_count,
    create,
    imap_account,
)
from tests.support.stack import Stack

pytestmark = [pytest.mark.connected, pytest.mark.e2e]
registry_stack = support.registry_stack  # the fixture


@pytest.fixture
async def nc(registry_stack: Stack) -> AsyncIterator[Any]:
    """A NATS client of the test's own, as the sync or sender service would have."""
    client = await connect(registry_stack.nats.url, name="test-client")
    yield client
    await client.close()


def err(r: Any) -> str:
    return str(r.json()["error"]["code"])


async def blobs(stack: Stack) -> list[tuple[str, int, int, bytes]]:
    b = credential_blobs.c
    async with stack.host.service("registry").db.read() as conn:
        rows = await conn.execute(select(b.account_id, b.version, b.kek_version, b.blob))
        return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]


async def test_lease_returns_the_secret_and_is_audited(registry_stack: Stack, nc: Any) -> None:
    s = registry_stack
    a = await create(s, imap_account(password="open sesame"))
    before = datetime.now(UTC)
    lease = await lease_credential(nc, "acme", a["id"], "sync", "imap poll")
    assert lease.secret.get_secret_value() == "open sesame"
    assert "open sesame" not in repr(lease) and "open sesame" not in str(lease)
    assert (lease.account_id, lease.username, lease.auth_mode) == (
        a["id"],
        "alice@example.com",
        "password",
    )
    assert lease.incoming is not None and lease.incoming.host == "imap.example.com"
    assert before < lease.lease_expires_at <= datetime.now(UTC) + timedelta(seconds=301)
    assert await audit_types(s, a["id"], 2) == ["AccountAdded", "CredentialAccessed"]
    r = await s.call("GET", "/v1/audit/events", params={"type": "CredentialAccessed"})
    event = r.json()["items"][0]["event"]
    assert event["actor"] == "service:sync"
    assert event["data"]["by_service"] == "sync" and event["data"]["purpose"] == "imap poll"
    assert event["data"]["credential"]["version"] == 1
    assert "open sesame" not in json.dumps(r.json())
    got = (await s.call("GET", f"/v1/accounts/{a['id']}")).json()
    assert got["last_leased_at"] is not None


async def test_many_leases_at_once_are_each_answered_and_audited(
    registry_stack: Stack, nc: Any
) -> None:
    """A starting sync worker asks for many leases at once, and the registry works on up to
    ``LEASE_WORKERS`` of them together: each is answered with its own account's secret, also
    with eight on one account, and recorded once as CredentialAccessed in a gap-free history."""
    s = registry_stack
    accounts = [
        (await create(s, imap_account(f"box{i}@example.com", password=f"pw-{i}")))["id"]
        for i in range(6)
    ]
    asked = [accounts[i % len(accounts)] for i in range(48)]
    leases = await asyncio.gather(
        *(lease_credential(nc, "acme", a, "sync", f"startup {i}") for i, a in enumerate(asked))
    )
    for account_id, lease in zip(asked, leases, strict=True):
        assert lease.account_id == account_id
        assert lease.secret.get_secret_value() == f"pw-{accounts.index(account_id)}"
    db = s.host.service("registry").db
    async with db.transaction() as tx:
        for account_id in accounts:
            history = await tx.load("acme", account_id)
            assert [e.aggregate_version for e in history] == list(range(1, len(history) + 1))
            assert sum(e.event_name == "CredentialAccessed" for e in history) == 8


async def test_lease_refusals(registry_stack: Stack, nc: Any) -> None:
    s = registry_stack
    a = await create(s)
    bare = await create(s, imap_account("nopw@example.com", password=None))
    cases = [
        (("acme", a["id"], "mallory", "steal"), "unknown_service"),
        (("acme", bare["id"], "sync", "poll"), "no_credential"),
        (("acme", "no-such-account", "sync", "poll"), "not_found"),
        (("globex", a["id"], "sync", "poll"), "not_found"),  # another tenant
    ]
    for args, code in cases:
        with pytest.raises(LeaseRefused) as info:
            await lease_credential(nc, *args)
        assert info.value.code == code, args
    await s.call("POST", f"/v1/accounts/{a['id']}/disable")
    with pytest.raises(LeaseRefused) as info:
        await lease_credential(nc, "acme", a["id"], "sender", "send")
    assert info.value.code == "account_disabled"
    await s.call("DELETE", f"/v1/accounts/{a['id']}")
    with pytest.raises(LeaseRefused) as info:
        await lease_credential(nc, "acme", a["id"], "sender", "send")
    assert info.value.code == "not_found"
    msg = await nc.request(LEASE_SUBJECT, b"not json", timeout=5)
    assert json.loads(msg.data)["error"]["code"] == "invalid_request"
    msg = await nc.request(LEASE_SUBJECT, json.dumps({"tenant_id": "acme"}).encode(), timeout=5)
    assert json.loads(msg.data)["error"]["code"] == "invalid_request"
    crlf = {"tenant_id": "acme", "account_id": a["id"], "service": "sync\r\nx: y", "purpose": "p"}
    msg = await nc.request(LEASE_SUBJECT, json.dumps(crlf).encode(), timeout=5)
    assert json.loads(msg.data)["error"]["code"] == "invalid_request"  # it would be a header
    r = await s.call("GET", "/v1/audit/events", params={"type": "CredentialAccessed"})
    assert r.json()["items"] == []  # a refused lease is no access


async def test_replace_credential(registry_stack: Stack, nc: Any) -> None:
    s = registry_stack
    a = await create(s, imap_account(password="old-pw"))
    [(_, _, _, old_blob)] = await blobs(s)
    r = await s.call("PUT", f"/v1/accounts/{a['id']}/credential", json={"password": "new-pw"})
    assert r.status_code == 200 and r.json()["credential_version"] == 2
    assert r.json()["has_credential"] and "new-pw" not in r.text
    [(account_id, version, _, new_blob)] = await blobs(s)  # the old blob is gone
    assert (account_id, version) == (a["id"], 2) and new_blob != old_blob
    assert (
        await lease_credential(nc, "acme", a["id"], "sender", "x")
    ).secret.get_secret_value() == "new-pw"
    bare = await create(s, imap_account("nopw@example.com", password=None))
    assert not bare["has_credential"] and bare["credential_version"] is None
    r = await s.call("PUT", f"/v1/accounts/{bare['id']}/credential", json={"password": "first"})
    assert r.json()["credential_version"] == 1
    empty = await create(s, imap_account("empty@example.com", password=None))
    r = await s.call("DELETE", f"/v1/accounts/{empty['id']}")
    assert r.json()["credential_shredded"] is False
    r = await s.call("PUT", f"/v1/accounts/{a['id']}/credential", json={"password": ""})
    assert r.status_code == 422
    assert await audit_types(s, a["id"], 3) == [
        "AccountAdded",
        "CredentialRotated",
        "CredentialAccessed",
    ]
    r = await s.call("GET", "/v1/audit/events", params={"aggregate_id": a["id"]})
    assert r.json()["items"][1]["event"]["data"]["cause"] == "replaced"


async def test_a_rolled_back_blob_does_not_open(registry_stack: Stack, nc: Any) -> None:
    """Someone with database access puts back the old blob row: the lease refuses it."""
    s = registry_stack
    a = await create(s, imap_account(password="v1"))
    [old] = await blobs(s)
    await s.call("PUT", f"/v1/accounts/{a['id']}/credential", json={"password": "v2"})
    b = credential_blobs.c
    async with s.host.service("registry").db.write() as conn:
        await conn.execute(
            credential_blobs.update().where(b.account_id == a["id"]).values(blob=old[3])
        )
    with pytest.raises(LeaseRefused) as info:
        await lease_credential(nc, "acme", a["id"], "sync", "poll")
    assert info.value.code == "credential_unavailable"


async def test_kek_rotation_and_retirement(registry_stack: Stack, nc: Any) -> None:
    s = registry_stack
    accounts = [
        await create(s, imap_account(f"u{i}@example.com", password=f"pw-{i}")) for i in range(3)
    ]
    await s.call("POST", f"/v1/accounts/{accounts[0]['id']}/disable")
    other = await create(s, imap_account("x@example.com", password="g"), tenant="globex")
    status = (await s.call("GET", "/v1/admin/keys")).json()
    assert status == {
        "active_version": 1,
        "versions": [1],
        "managed": True,
        "blobs_by_version": {"1": 3},
    }
    r = await s.call("POST", "/v1/admin/keys/retire", json={"version": 1})
    assert r.status_code == 409 and err(r) == "kek_active"
    before = {row[0]: row[3] for row in await blobs(s)}

    r = await s.call("POST", "/v1/admin/keys/rotate")
    assert r.status_code == 200, r.text
    assert r.json() | {"versions": None} == {
        "generated": True,
        "active_version": 2,
        "versions": None,
        "rewrapped": 3,
        "failed": [],
        "blobs_by_version": {"2": 3},
    }
    ring = KeyRing.from_json((s.settings.data_dir / EMBEDDED_KEK_FILE).read_text())
    assert ring.versions == (1, 2) and ring.active_version == 2
    after = {row[0]: row[3] for row in await blobs(s)}
    for a in accounts:  # the data ciphertext (after the 80-byte header) is unchanged
        assert after[a["id"]][80:] == before[a["id"]][80:]
        assert after[a["id"]][:80] != before[a["id"]][:80]
    assert await audit_types(s, accounts[1]["id"], 2) == ["AccountAdded", "CredentialRotated"]
    r = await s.call("GET", "/v1/audit/events", params={"aggregate_id": accounts[1]["id"]})
    assert r.json()["items"][1]["event"]["data"]["cause"] == "kek_rotation"
    assert r.json()["items"][1]["event"]["data"]["credential"]["kek_version"] == 2

    r = await s.call("POST", "/v1/admin/keys/retire", json={"version": 1})
    assert r.status_code == 409 and err(r) == "kek_in_use"  # globex's blob
    assert r.json()["error"]["details"] == {"blobs": 1}
    # globex is not a key-admin tenant: its admin re-wraps its own credentials, and may
    # neither add a KEK version (every tenant's ring) nor retire one.
    r = await s.call("POST", "/v1/admin/keys/rotate", json={"generate": True}, tenant="globex")
    assert r.status_code == 403 and err(r) == "key_admin_required"
    r = await s.call("POST", "/v1/admin/keys/retire", json={"version": 1}, tenant="globex")
    assert r.status_code == 403 and err(r) == "key_admin_required"
    r = await s.call("POST", "/v1/admin/keys/rotate", tenant="globex")  # default: re-wrap only
    assert r.json()["generated"] is False
    assert r.json()["rewrapped"] == 1 and r.json()["active_version"] == 2
    r = await s.call("POST", "/v1/admin/keys/retire", json={"version": 1})
    assert r.status_code == 200 and r.json()["removed_from_keyring"] is True
    assert r.json()["versions"] == [2]
    r = await s.call("POST", "/v1/admin/keys/retire", json={"version": 1})
    assert r.status_code == 404 and err(r) == "unknown_kek_version"

    await s.call("POST", f"/v1/accounts/{accounts[0]['id']}/reactivate")
    for i, a in enumerate(accounts):
        lease = await lease_credential(nc, "acme", a["id"], "sync", "after rotation")
        assert lease.secret.get_secret_value() == f"pw-{i}"
    lease = await lease_credential(nc, "globex", other["id"], "sync", "after rotation")
    assert lease.secret.get_secret_value() == "g"
    assert await blob_count(s) == 4
