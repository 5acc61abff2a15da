"""Audit queries through the HTTP API with registry, authz and audit running: tenant admins read
the whole trail, anyone else one mailbox's entries with Read on it (decided by authz)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from libs.common.auth import Role
from libs.common.natsserver import NatsServer
from services.audit.app import AuditService
from tests.support.registry import imap_account, stop
from tests.support.stack import Stack, start_stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.connected]


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, nats_server, ("registry", "authz", "audit"))
    try:
        yield s
    finally:
        await stop(s)


async def _new(stack: Stack, path: str, body: dict[str, Any], tenant: str = "acme") -> str:
    r = await stack.call("POST", path, json=body, tenant=tenant)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _events(stack: Stack, who: str, role: Role = "employee", **params: Any) -> Any:
    return await stack.call("GET", "/v1/audit/events", params=params, subject=who, role=role)


def _code(r: Any) -> str:
    return str(r.json()["error"]["code"])


async def test_read_on_a_mailbox_reads_its_entries_and_nothing_else(stack: Stack) -> None:
    owner, reader, outsider = [
        await _new(stack, "/v1/employees", {"name": n, "email": f"{n}@x.io"})
        for n in ("owner", "reader", "outsider")
    ]
    box = await _new(stack, "/v1/accounts", imap_account("box@x.io", owner_id=owner))
    box2 = await _new(stack, "/v1/accounts", imap_account("box2@x.io", owner_id=owner))
    body = {"grantee_kind": "employee", "grantee_id": reader, "level": "read"}
    r = await stack.call("POST", f"/v1/mailboxes/{box}/grants", json=body)
    assert r.status_code == 201, r.text
    granted = r.json()["revision"]

    async def box_trail() -> list[dict[str, Any]] | None:
        items = (await _events(stack, "admin", "admin", aggregate_id=box)).json()["items"]
        names = {i["event"]["type"].split(".")[2] for i in items}
        return items if {"AccountAdded", "AccessGranted"} <= names else None

    admin_view = await wait_until(box_trail)
    audit = cast(AuditService, stack.host.service("audit"))
    assert audit.access.latest_revision("acme") == granted  # seen in the consumed events

    # The reader gets exactly the mailbox's entries, as the admin sees them.
    r = await _events(stack, reader, aggregate_id=box)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == admin_view
    assert {i["event"]["aggregate_id"] for i in r.json()["items"]} == {box}
    r = await _events(stack, reader, aggregate_id=box, type="AccessGranted")
    assert [i["event"]["data"]["grantee_id"] for i in r.json()["items"]] == [reader]
    r = await _events(stack, reader, aggregate_id=box, aggregate_type="employee")
    assert r.status_code == 200 and r.json()["items"] == []
    r = await _events(stack, owner, aggregate_id=box2)  # the owner holds configure
    assert r.status_code == 200 and r.json()["items"]
    # Newest first, paged with the cursor both ways: the same rules, the same entries.
    r = await _events(stack, reader, aggregate_id=box, order="desc", limit=1)
    assert r.status_code == 200 and r.json()["items"] == admin_view[-1:]
    older = await _events(
        stack, reader, aggregate_id=box, order="desc", cursor=r.json()["next_cursor"]
    )
    assert older.json()["items"] == list(reversed(admin_view[:-1]))
    back = await _events(
        stack, reader, aggregate_id=box, order="desc", limit=1, cursor=older.json()["prev_cursor"]
    )
    assert back.json()["items"] == admin_view[-1:] and back.json()["prev_cursor"] is None
    r = await _events(stack, reader, order="desc")
    assert (r.status_code, _code(r)) == (403, "mailbox_required")

    # No mailbox named, no read on it, or not a mailbox: refused with a clear code.
    r = await _events(stack, reader)
    assert (r.status_code, _code(r)) == (403, "mailbox_required")
    r = await _events(stack, reader, actor="admin:admin")
    assert (r.status_code, _code(r)) == (403, "mailbox_required")
    r = await _events(stack, reader, aggregate_id=box2)
    assert (r.status_code, _code(r)) == (403, "forbidden")
    assert r.json()["error"]["details"]["reason"] == "no_access"
    r = await _events(stack, outsider, aggregate_id=box)
    assert (r.status_code, _code(r)) == (403, "forbidden")
    r = await _events(stack, reader, aggregate_id=owner)  # an employee, not a mailbox
    assert (r.status_code, _code(r)) == (404, "mailbox_not_found")
    for path in ("/v1/audit/verify", "/v1/audit/export", "/v1/audit/replay"):
        r = await stack.call("GET", path, subject=reader, role="employee")
        assert (r.status_code, _code(r)) == (403, "admin_required"), path

    # Service accounts: a token scope gives read on one mailbox.
    bot = stack.host.runtime.issuer
    assert bot is not None
    token = bot.issue("acme", "bot", "service", scopes=[f"mailbox:{box}:read"])
    auth = {"Authorization": f"Bearer {token}"}
    r = await stack.client.get("/v1/audit/events", params={"aggregate_id": box}, headers=auth)
    assert r.status_code == 200 and r.json()["items"] == admin_view
    r = await stack.client.get("/v1/audit/events", params={"aggregate_id": box2}, headers=auth)
    assert r.status_code == 403

    # Another tenant: its admin sees nothing of acme, its employees cannot even find the box.
    r = await stack.call("GET", "/v1/audit/events", params={"aggregate_id": box}, tenant="globex")
    assert r.status_code == 200 and r.json()["items"] == []
    r = await stack.call(
        "GET",
        "/v1/audit/events",
        params={"aggregate_id": box},
        tenant="globex",
        subject=reader,
        role="employee",
    )
    assert (r.status_code, _code(r)) == (404, "mailbox_not_found")

    # Revoked: refused at once (authz answers from the revision the revoke returned).
    r = await stack.call("DELETE", f"/v1/mailboxes/{box}/grants/employee/{reader}")
    assert r.status_code == 200 and r.json()["changed"] is True
    r = await _events(stack, reader, aggregate_id=box)
    assert (r.status_code, _code(r)) == (403, "forbidden")
