"""The sync API: tenant scoping (cross-tenant probes), permissions, filters, history."""

# ruff: noqa: F811 -- pytest fixtures imported from test_sync_support are parameters here

from __future__ import annotations

import pytest

from libs.common.auth import Principal
from tests.integration.test_sync_support import (  # noqa: F401 -- fixtures
    SyncHarness,
    harness,
    raw_mail,
    settle,
    sync_env,
)
from tests.support.dovecot import Dovecot

pytestmark = [pytest.mark.connected]


class ReadOnly:
    """Employee ``alice`` may read one mailbox."""

    def __init__(self, mailbox_id: str) -> None:
        self.mailbox_id = mailbox_id

    async def may_read(self, principal: Principal, mailbox_id: str) -> bool:
        return principal.is_admin or (
            principal.subject == "alice" and mailbox_id == self.mailbox_id
        )


async def test_tenants_never_see_each_other(harness: SyncHarness, dovecot: Dovecot) -> None:
    user, pw = dovecot.new_user()
    dovecot.deliver(user, raw_mail("there before the account was added"))
    acme = await harness.add_account(dovecot, user, pw)
    other_user, other_pw = dovecot.new_user()
    globex = await harness.add_account(dovecot, other_user, other_pw, tenant="globex")
    await harness.wait_state(acme, "online")
    call = harness.stack.call
    for path in (
        f"/v1/sync/mailboxes/{acme}",
        f"/v1/sync/mailboxes/{acme}/history",
    ):
        r = await call("GET", path, tenant="globex")
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "mailbox_not_found"
    r = await call("POST", f"/v1/accounts/{acme}/sync", tenant="globex")
    assert r.status_code == 404
    r = await call("GET", "/v1/sync/status", tenant="globex")
    assert [x["mailbox_id"] for x in r.json()["items"]] == [globex]
    r = await call("GET", "/v1/sync/status", params={"mailbox": globex})
    assert r.json()["items"] == []
    r = await call("GET", "/v1/sync/status")
    assert [x["mailbox_id"] for x in r.json()["items"]] == [acme]
    r = await harness.stack.client.get("/v1/sync/status")
    assert r.status_code == 401
    detail = await harness.status(acme)
    assert detail["message_count"] == 1 and detail["folders"][0]["known"] == 1
    await settle(1.0)
    assert harness.events("MessageReceived", acme) == []  # older mail is not "received"


async def test_employees_need_read_on_the_mailbox(harness: SyncHarness, dovecot: Dovecot) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw)
    second_user, second_pw = dovecot.new_user()
    other = await harness.add_account(dovecot, second_user, second_pw)
    await harness.wait_state(acc, "online")
    await harness.wait_state(other, "online")
    call = harness.stack.call
    # No authz service runs here: checks are denied by default.
    r = await call("GET", f"/v1/sync/mailboxes/{acc}", subject="alice", role="employee")
    assert r.status_code == 403
    r = await call("GET", "/v1/sync/status", subject="alice", role="employee")
    assert r.json()["items"] == []
    harness.service.use_permissions(ReadOnly(acc))
    r = await call("GET", f"/v1/sync/mailboxes/{acc}", subject="alice", role="employee")
    assert r.status_code == 200 and r.json()["status"]["state"] == "online"
    r = await call("GET", f"/v1/sync/mailboxes/{other}", subject="alice", role="employee")
    assert r.status_code == 403
    r = await call("GET", "/v1/sync/status", subject="alice", role="employee")
    assert [x["mailbox_id"] for x in r.json()["items"]] == [acc]
    r = await call("POST", f"/v1/accounts/{acc}/sync", subject="alice", role="employee")
    assert r.status_code == 202
    r = await call("POST", f"/v1/accounts/{other}/sync", subject="bob", role="employee")
    assert r.status_code == 403


async def test_status_filters_and_history(harness: SyncHarness, dovecot: Dovecot) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw)
    await harness.wait_state(acc, "online")
    await harness.disable(acc)
    await harness.wait_state(acc, "disabled")
    call = harness.stack.call
    r = await call("GET", "/v1/sync/status", params={"state": "disabled"})
    assert [x["mailbox_id"] for x in r.json()["items"]] == [acc]
    r = await call("GET", "/v1/sync/status", params={"state": "online"})
    assert r.json()["items"] == []
    r = await call("GET", "/v1/sync/status", params={"state": "bogus"})
    assert r.status_code == 422
    r = await call("GET", f"/v1/sync/mailboxes/{acc}/history")
    items = r.json()["items"]
    assert [(x["previous"], x["state"]) for x in items] == [
        (None, "syncing"),
        ("syncing", "online"),
        ("online", "disabled"),
    ]
    assert items[-1]["detail"] == "test"
    r = await call("GET", "/v1/sync/mailboxes/does-not-exist")
    assert r.status_code == 404
