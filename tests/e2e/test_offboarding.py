"""One-step offboarding end to end: registry, authz and audit on a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from libs.common.natsserver import NatsServer
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


async def _employee(stack: Stack, name: str) -> str:
    r = await stack.call("POST", "/v1/employees", json={"name": name, "email": f"{name}@x.io"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_offboard_with_successor_hands_over_and_revokes(stack: Stack) -> None:
    leaver, successor = await _employee(stack, "leaver"), await _employee(stack, "newhire")
    personal = await stack.call(
        "POST", "/v1/accounts", json=imap_account("leaver@x.io", owner_id=leaver)
    )
    shared = await stack.call(
        "POST", "/v1/accounts", json=imap_account("team@x.io", ownership="shared")
    )
    personal_id, shared_id = personal.json()["id"], shared.json()["id"]

    async def granted() -> bool:  # authz learns of the new mailbox from the event stream
        grant = await stack.call(
            "POST",
            f"/v1/mailboxes/{shared_id}/grants",
            json={"grantee_kind": "employee", "grantee_id": leaver, "level": "send"},
        )
        return grant.status_code in (200, 201)

    await wait_until(granted)

    async def leaver_can_read(mailbox: str) -> int:
        r = await stack.call("GET", f"/v1/accounts/{mailbox}", role="employee", subject=leaver)
        return r.status_code

    assert await leaver_can_read(personal_id) == 200

    r = await stack.call(
        "POST",
        f"/v1/employees/{leaver}/offboard",
        json={"successor_id": successor, "autoreply": "I have left; write to newhire@x.io"},
    )
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["changed"] is True and done["status"] == "offboarded"
    assert [m["id"] for m in done["mailboxes"]] == [personal_id]
    assert done["mailboxes"][0]["handed_over_to"] == successor

    again = await stack.call("POST", f"/v1/employees/{leaver}/offboard", json={})
    assert again.status_code == 200 and again.json()["changed"] is False  # says so

    account = (await stack.call("GET", f"/v1/accounts/{personal_id}")).json()
    assert account["owner_id"] == successor  # history kept, new owner

    async def leaver_locked_out() -> bool:
        r = await stack.call("GET", f"/v1/accounts/{shared_id}", role="employee", subject=leaver)
        return r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"

    await wait_until(leaver_locked_out)

    async def successor_configures() -> bool:
        r = await stack.call(
            "PATCH",
            f"/v1/accounts/{personal_id}",
            json={"display_name": "handed over"},
            role="employee",
            subject=successor,
        )
        return r.status_code == 200

    await wait_until(successor_configures)
    access = (await stack.call("GET", f"/v1/mailboxes/{shared_id}/access")).json()
    grantees = {e["grantee_id"] for e in access["entries"]}
    assert leaver not in grantees and "admin" in {e["source"] for e in access["entries"]}

    report = (await stack.call("GET", f"/v1/employees/{leaver}/offboarding")).json()
    assert report["autoreply"].startswith("I have left") and report["successor_id"] == successor

    async def audited() -> bool:
        r = await stack.call("GET", "/v1/audit/events", params={"limit": 1000})
        types = {i["event"]["type"].split(".")[2] for i in r.json()["items"]}
        return {"EmployeeOffboarded", "MailboxHandedOver", "AccessRevoked"} <= types

    await wait_until(audited)

    back = await stack.call("POST", f"/v1/employees/{leaver}/reinstate")
    assert back.status_code == 200 and back.json()["status"] == "active"
    assert (await stack.call("POST", f"/v1/employees/{leaver}/reinstate")).status_code == 409


async def test_offboard_without_successor_and_bad_input(stack: Stack) -> None:
    leaver = await _employee(stack, "solo")
    r = await stack.call("POST", f"/v1/employees/{leaver}/offboard", json={"successor_id": "nope"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_successor"
    r = await stack.call("POST", "/v1/employees/missing/offboard", json={})
    assert r.status_code == 404
    r = await stack.call("POST", f"/v1/employees/{leaver}/offboard", json={})
    assert r.status_code == 200 and r.json()["changed"] is True and r.json()["mailboxes"] == []
    r = await stack.call(
        "POST", f"/v1/employees/{leaver}/offboard", json={}, role="employee", subject=leaver
    )
    assert r.status_code in (401, 403)
