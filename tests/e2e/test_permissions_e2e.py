"""Registry changes are enforced by the authz service's grants, end to end through the API."""

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


async def test_owner_grant_and_revoke_decide_who_may_configure(stack: Stack) -> None:
    owner = await stack.call("POST", "/v1/employees", json={"name": "O", "email": "o@x.io"})
    other = await stack.call("POST", "/v1/employees", json={"name": "P", "email": "p@x.io"})
    owner_id, other_id = owner.json()["id"], other.json()["id"]
    r = await stack.call("POST", "/v1/accounts", json=imap_account("box@x.io", owner_id=owner_id))
    assert r.status_code == 201, r.text
    box = r.json()["id"]

    async def patch(subject: str) -> int:
        body = {"display_name": f"by {subject}"}
        r = await stack.call(
            "PATCH", f"/v1/accounts/{box}", json=body, role="employee", subject=subject
        )
        return r.status_code

    assert await patch(owner_id) == 200  # the owner holds configure (authz, right after adding)
    assert await patch(other_id) == 403
    grant = await stack.call(
        "POST",
        f"/v1/mailboxes/{box}/grants",
        json={"grantee_kind": "employee", "grantee_id": other_id, "level": "configure"},
    )
    assert grant.status_code == 201, grant.text
    assert await patch(other_id) == 200
    revoke = await stack.call("DELETE", f"/v1/mailboxes/{box}/grants/employee/{other_id}")
    assert revoke.status_code == 200
    assert await patch(other_id) == 403

    async def denial_audited() -> bool:
        r = await stack.call("GET", "/v1/audit/events", params={"aggregate_id": box})
        return any(i["event"]["type"].endswith("AccessRevoked.v1") for i in r.json()["items"])

    await wait_until(denial_audited)
