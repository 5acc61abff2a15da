"""Accounts through the HTTP API of a registry+audit stack on a real nats-server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from libs.common.auth import Principal
from libs.common.errors import Forbidden
from libs.common.natsserver import NatsServer
from services.registry.permissions import Action
from tests.support import registry as support
from tests.support.registry import (
    IMAPS,
    SUBMISSION,
    audit_types,
    blob_count,
    create,
    imap_account,
    start_custom,
    stop,
)
from tests.support.stack import Stack

pytestmark = [pytest.mark.connected, pytest.mark.e2e]
registry_stack = support.registry_stack  # the fixture


def err(r: Any) -> str:
    return str(r.json()["error"]["code"])


async def test_lifecycle_events_reach_the_audit_trail(registry_stack: Stack) -> None:
    s = registry_stack
    a = await create(s, imap_account(display_name="Alice", forwarding=["boss@example.com"]))
    assert a["status"] == "active" and a["has_credential"] and a["credential_version"] == 1
    assert "password" not in a and a["forwarding"] == ["boss@example.com"]
    url = f"/v1/accounts/{a['id']}"
    r = await s.call(
        "PATCH",
        url,
        json={
            "display_name": "Alice B",
            "polling_interval_s": 300,
            "send_as_name": "Alice",
            "daily_send_limit": 500,
        },
    )
    assert r.status_code == 200 and r.json()["display_name"] == "Alice B"
    assert r.headers["etag"] == '"2"'
    r = await s.call("POST", f"{url}/disable", json={"reason": "on leave"})
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    r = await s.call("POST", f"{url}/reactivate")
    assert r.status_code == 200 and r.json()["status"] == "active"
    r = await s.call("DELETE", url)
    assert r.status_code == 200 and r.json() == {
        "id": a["id"],
        "address": "alice@example.com",
        "deleted": True,
        "credential_shredded": True,
    }
    assert await blob_count(s, a["id"]) == 0
    assert (await s.call("GET", url)).status_code == 404
    assert await audit_types(s, a["id"], 5) == [
        "AccountAdded",
        "AccountUpdated",
        "AccountDisabled",
        "AccountReactivated",
        "AccountDeleted",
    ]
    r = await s.call("GET", "/v1/audit/events", params={"aggregate_id": a["id"]})
    updated = r.json()["items"][1]["event"]
    assert updated["actor"] == "admin:admin"
    assert updated["data"]["changed"] == [
        "display_name",
        "polling_interval_s",
        "send_as_name",
        "daily_send_limit",
    ]
    assert all("hunter2" not in str(i) for i in r.json()["items"])


async def test_disabled_account_refuses_edits_but_can_be_deleted(registry_stack: Stack) -> None:
    s = registry_stack
    a = await create(s)
    url = f"/v1/accounts/{a['id']}"
    await s.call("POST", f"{url}/disable")
    r = await s.call("PATCH", url, json={"display_name": "x"})
    assert r.status_code == 409 and err(r) == "account_disabled"
    r = await s.call("PUT", f"{url}/credential", json={"password": "new"})
    assert r.status_code == 409 and err(r) == "account_disabled"
    r = await s.call("POST", f"{url}/disable")
    assert r.status_code == 409 and err(r) == "already_disabled"
    assert (await s.call("GET", url)).json()["version"] == 2  # nothing was written
    assert (await s.call("DELETE", url)).json()["credential_shredded"] is True
    r = await s.call("POST", f"{url}/reactivate")
    assert r.status_code == 404 and err(r) == "account_deleted"


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"address": "not-an-address"}, 422, "invalid_address"),
        ({"incoming": {**IMAPS, "security": "starttls"}}, 422, "invalid_server"),
        ({"incoming": {**IMAPS, "port": 143, "security": "ssl"}}, 422, "invalid_server"),
        ({"outgoing": {**SUBMISSION, "security": "ssl"}}, 422, "invalid_server"),
        ({"incoming": {**IMAPS, "port": 143, "security": "none"}}, 422, "insecure_not_allowed"),
        ({"preset_id": "no-such-provider"}, 422, "unknown_preset"),
        ({"forwarding": [f"f{i}@example.com" for i in range(21)]}, 422, "too_many_forwards"),
        ({"incoming": {**IMAPS, "port": 0}}, 422, "invalid_request"),
        ({"protocol": "carrier-pigeon"}, 422, "invalid_request"),
        ({"unknown_field": 1}, 422, "invalid_request"),
        ({"owner_id": "nobody"}, 422, "unknown_owner"),
    ],
)
async def test_validation_errors_are_clear_4xx_and_write_nothing(
    registry_stack: Stack, change: dict[str, Any], status: int, code: str
) -> None:
    r = await registry_stack.call("POST", "/v1/accounts", json=imap_account(**change))
    assert r.status_code == status and err(r) == code, r.text
    assert r.json()["error"]["message"]
    assert (await registry_stack.call("GET", "/v1/accounts")).json()["items"] == []
    assert await blob_count(registry_stack) == 0


async def test_insecure_server_with_opt_in_and_update_validation(registry_stack: Stack) -> None:
    s = registry_stack
    plain = {**IMAPS, "port": 143, "security": "none"}
    a = await create(s, imap_account(incoming=plain, allow_insecure=True))
    assert a["allow_insecure"] and a["incoming"]["security"] == "none"
    url = f"/v1/accounts/{a['id']}"
    r = await s.call("PATCH", url, json={"allow_insecure": False})
    assert r.status_code == 422 and err(r) == "insecure_not_allowed"
    r = await s.call("PATCH", url, json={"outgoing": {**SUBMISSION, "port": 465}})
    assert r.status_code == 422 and err(r) == "invalid_server"
    r = await s.call("PATCH", url, json={"forwarding": [f"f{i}@example.com" for i in range(21)]})
    assert r.status_code == 422 and err(r) == "too_many_forwards"
    assert (await s.call("GET", url)).json()["version"] == 1


async def test_duplicate_address_is_409(registry_stack: Stack) -> None:
    await create(registry_stack)
    r = await registry_stack.call("POST", "/v1/accounts", json=imap_account("ALICE@example.com"))
    assert r.status_code == 409 and err(r) == "duplicate_address"
    await create(registry_stack, tenant="globex")  # the same address in another tenant


async def test_idempotent_create(registry_stack: Stack) -> None:
    s = registry_stack
    key = {"Idempotency-Key": "create-alice-1"}
    first = await s.call("POST", "/v1/accounts", json=imap_account(), headers=key)
    again = await s.call("POST", "/v1/accounts", json=imap_account(), headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    r = await s.call("POST", "/v1/accounts", json=imap_account(display_name="B"), headers=key)
    assert r.status_code == 422 and err(r) == "idempotency_key_reused"
    assert len((await s.call("GET", "/v1/accounts")).json()["items"]) == 1
    assert await audit_types(s, first.json()["id"], 1) == ["AccountAdded"]


async def test_preset_create_and_list_filters(registry_stack: Stack) -> None:
    s = registry_stack
    g = await create(
        s,
        {
            "address": "team@gmail.com",
            "preset_id": "gmail",
            "ownership": "shared",
            "password": "app-pw",
        },
    )
    assert (g["protocol"], g["incoming"]["host"], g["auth_mode"]) == (
        "gmail",
        "imap.gmail.com",
        "app_password",
    )
    a = await create(s)
    p = await create(
        s,
        imap_account(
            "pop@example.com",
            protocol="pop3",
            leave_on_server=False,
            incoming={**IMAPS, "port": 995},
        ),
    )
    await s.call("POST", f"/v1/accounts/{p['id']}/disable")

    async def ids(**params: Any) -> list[str]:
        r = await s.call("GET", "/v1/accounts", params=params)
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()["items"]]

    assert await ids() == [g["id"], a["id"], p["id"]]
    assert await ids(status="disabled") == [p["id"]]
    assert await ids(ownership="shared") == [g["id"]]
    assert await ids(protocol="pop3") == [p["id"]]
    assert await ids(q="GMAIL") == [g["id"]]
    r = await s.call("GET", "/v1/accounts", params={"limit": 2})
    page = r.json()
    assert len(page["items"]) == 2 and page["next_cursor"] == a["id"]
    r = await s.call("GET", "/v1/accounts", params={"cursor": page["next_cursor"]})
    assert [i["id"] for i in r.json()["items"]] == [p["id"]]
    r = await s.call("GET", "/v1/accounts", params={"cursor": "x y"})
    assert r.status_code == 400 and err(r) == "invalid_cursor"
    r = await s.call("GET", "/v1/presets")
    assert "gmail" in [x["id"] for x in r.json()["items"]]


async def test_if_match_protects_against_lost_updates(registry_stack: Stack) -> None:
    s = registry_stack
    a = await create(s)
    url = f"/v1/accounts/{a['id']}"
    r = await s.call("PATCH", url, json={"display_name": "1"}, headers={"If-Match": '"1"'})
    assert r.status_code == 200
    r = await s.call("PATCH", url, json={"display_name": "2"}, headers={"If-Match": '"1"'})
    assert r.status_code == 409 and err(r) == "concurrent_modification"


async def test_owner_may_configure_their_account_others_may_not(registry_stack: Stack) -> None:
    s = registry_stack
    r = await s.call("POST", "/v1/employees", json={"name": "Eve", "email": "eve@example.com"})
    eve = r.json()["id"]
    mine = await create(s, imap_account(owner_id=eve))
    other = await create(s, imap_account("shared@example.com", ownership="shared"))
    as_eve = {"subject": eve, "role": "employee"}
    r = await s.call("PATCH", f"/v1/accounts/{mine['id']}", json={"display_name": "E"}, **as_eve)
    assert r.status_code == 200
    r = await s.call("PATCH", f"/v1/accounts/{other['id']}", json={"display_name": "E"}, **as_eve)
    assert r.status_code == 403 and err(r) == "not_permitted"
    r = await s.call("GET", f"/v1/accounts/{other['id']}", **as_eve)
    assert r.status_code == 403
    r = await s.call("GET", "/v1/accounts", **as_eve)
    assert [i["id"] for i in r.json()["items"]] == [mine["id"]]
    r = await s.call("POST", "/v1/accounts", json=imap_account("new@example.com"), **as_eve)
    assert r.status_code == 403
    r = await s.call("POST", "/v1/admin/keys/rotate", **as_eve)
    assert r.status_code == 403 and err(r) == "admin_required"


class DenyConfigure:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None, str]] = []

    async def require(
        self,
        principal: Principal,
        mailbox_id: str | None,
        action: Action,
        *,
        at_least_as_fresh: str | None = None,
    ) -> None:
        self.asked.append((principal.subject, mailbox_id, action))
        if action == "configure" and mailbox_id is not None:
            raise Forbidden("denied by policy", code="denied")


async def test_a_plugged_in_permissions_implementation_decides(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    policy = DenyConfigure()
    s = await start_custom(tmp_path, nats_server, permissions=policy)
    try:
        a = await create(s)
        r = await s.call("POST", f"/v1/accounts/{a['id']}/disable")
        assert r.status_code == 403 and err(r) == "denied"
        assert policy.asked == [("admin", None, "configure"), ("admin", a["id"], "configure")]
        assert (await s.call("GET", f"/v1/accounts/{a['id']}")).json()["status"] == "active"
    finally:
        await stop(s)


async def test_openapi_documents_models_and_errors(registry_stack: Stack) -> None:
    doc = (await registry_stack.client.get("/openapi.json")).json()
    ops = [
        (path, method, op)
        for path, item in doc["paths"].items()
        if path.startswith(
            ("/v1/accounts", "/v1/employees", "/v1/departments", "/v1/admin/keys", "/v1/presets")
        )
        for method, op in item.items()
    ]
    assert len(ops) >= 16
    for path, method, op in ops:
        ok = next(code for code in op["responses"] if code.startswith("2"))
        assert "$ref" in str(op["responses"][ok]), (path, method)
        assert {"401", "403", "404", "409", "422"} <= set(op["responses"]), (path, method)
    schemas = doc["components"]["schemas"]
    assert "password" not in schemas["AccountOut"]["properties"]
    assert schemas["AccountIn"]["properties"]["password"]["anyOf"][0]["writeOnly"] is True
