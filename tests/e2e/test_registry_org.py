"""The organisation's mail settings over HTTP, and mailboxes added with only address and
password: by an admin, or by an employee for themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.natsserver import NatsServer
from services.registry.settings import RegistrySettings
from tests.support.registry import audit_types, create, start_custom, stop
from tests.support.stack import Stack

pytestmark = [pytest.mark.connected, pytest.mark.e2e]

ORG = {
    "domains": ["acme.example", "acme-group.example"],
    "incoming": {"host": "mail.acme.example", "port": 993, "security": "ssl", "protocol": "imap"},
    "outgoing": {"host": "mail.acme.example", "port": 587, "security": "starttls"},
    "username_template": "%EMAILLOCALPART%",
    "polling_interval_s": 600,
}


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    # No DNS server is reachable here: discovery must not be needed for these addresses.
    settings = RegistrySettings(dns_server="127.0.0.1:9", discovery_timeout_s=0.5)
    s = await start_custom(tmp_path, nats_server, registry_settings=settings)
    try:
        yield s
    finally:
        await stop(s)


def code(r: Any) -> str:
    return str(r.json()["error"]["code"])


async def test_settings_then_address_and_password_are_enough(stack: Stack) -> None:
    s = stack
    r = await s.call("GET", "/v1/org/mail-settings")
    assert r.status_code == 404 and code(r) == "no_org_settings"
    r = await s.call("PUT", "/v1/org/mail-settings", json=ORG)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["changed"] and doc["incoming"]["host"] == "mail.acme.example"
    assert (await s.call("PUT", "/v1/org/mail-settings", json=ORG)).json()["changed"] is False
    got = (await s.call("GET", "/v1/org/mail-settings", role="employee", subject="e1")).json()
    assert got["domains"] == ["acme.example", "acme-group.example"]

    r = await s.call(
        "POST", "/v1/accounts", json={"address": "Jane.Doe@acme.example", "password": "pw"}
    )
    assert r.status_code == 201, r.text
    assert r.headers["mailroom-servers-from"] == "org_settings"
    a = r.json()
    assert (a["protocol"], a["username"], a["polling_interval_s"]) == ("imap", "Jane.Doe", 600)
    assert a["incoming"] == {**ORG["incoming"], "url": None}
    assert a["outgoing"]["port"] == 587 and a["has_credential"]

    # A caller's own values still win.
    b = await create(
        s, {"address": "ops@acme-group.example", "password": "pw", "username": "ops-login"}
    )
    assert b["username"] == "ops-login" and b["incoming"]["host"] == "mail.acme.example"

    # A built-in preset's domain needs no discovery either.
    r = await s.call("POST", "/v1/accounts", json={"address": "x@gmail.com", "password": "pw"})
    assert r.status_code == 201 and r.headers["mailroom-servers-from"] == "preset"
    assert r.json()["incoming"]["host"] == "imap.gmail.com"


async def test_org_settings_events_reach_the_audit_trail(stack: Stack) -> None:
    await stack.call("PUT", "/v1/org/mail-settings", json=ORG)
    await stack.call("PUT", "/v1/org/mail-settings", json={**ORG, "polling_interval_s": 900})
    names = await audit_types(stack, "org-acme", 2)
    assert names == ["OrgMailSettingsChanged", "OrgMailSettingsChanged"]
    r = await stack.call("GET", "/v1/audit/events", params={"aggregate_id": "org-acme"})
    assert r.json()["items"][1]["event"]["data"]["changed"] == ["polling_interval_s"]


async def test_settings_are_validated_and_admin_only(stack: Stack) -> None:
    s = stack
    r = await s.call("PUT", "/v1/org/mail-settings", json=ORG, role="employee", subject="e1")
    assert r.status_code == 403
    for bad, expected in (
        ({"domains": ["not a domain"]}, "invalid_domain"),
        ({"username_template": "%USER%"}, "invalid_username_template"),
        ({"outgoing": None}, "invalid_server"),
        ({"incoming": {**ORG["incoming"], "security": "none"}}, "insecure_not_allowed"),
    ):
        r = await s.call("PUT", "/v1/org/mail-settings", json={**ORG, **bad})
        assert r.status_code == 422 and code(r) == expected, r.text


async def test_employee_self_service(stack: Stack) -> None:
    s = stack
    emp = (
        await s.call(
            "POST", "/v1/employees", json={"name": "Jane Doe", "email": "jane@acme.example"}
        )
    ).json()
    as_jane = {"role": "employee", "subject": emp["id"]}
    body = {"address": "jane@acme.example", "password": "pw"}
    r = await s.call("POST", "/v1/accounts", json=body, **as_jane)  # type: ignore[arg-type]
    assert r.status_code == 403  # no organisation settings yet: self-service is off

    await s.call("PUT", "/v1/org/mail-settings", json=ORG)
    r = await s.call("POST", "/v1/accounts", json=body, **as_jane)  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    a = r.json()
    assert (a["owner_id"], a["ownership"]) == (emp["id"], "personal")
    listed = await s.call("GET", "/v1/accounts", **as_jane)  # type: ignore[arg-type]
    assert [x["id"] for x in listed.json()["items"]] == [a["id"]]

    for other, reason in (
        ({"address": "jane@gmail.com", "password": "pw"}, "outside the organisation"),
        ({"address": "team@acme.example", "password": "pw", "ownership": "shared"}, "personal"),
        ({"address": "bob@acme.example", "password": "pw", "owner_id": "someone"}, "personal"),
    ):
        r = await s.call("POST", "/v1/accounts", json=other, **as_jane)  # type: ignore[arg-type]
        assert r.status_code == 403 and reason in r.json()["error"]["message"], r.text

    await s.call("PUT", "/v1/org/mail-settings", json={**ORG, "employee_self_service": "any"})
    r = await s.call(
        "POST",
        "/v1/accounts",
        json={"address": "jane@gmail.com", "password": "pw"},
        **as_jane,  # type: ignore[arg-type]
    )
    assert r.status_code == 201 and r.json()["owner_id"] == emp["id"]
    await s.call("PUT", "/v1/org/mail-settings", json={**ORG, "employee_self_service": "off"})
    r = await s.call(
        "POST",
        "/v1/accounts",
        json={"address": "j2@acme.example", "password": "pw"},
        **as_jane,  # type: ignore[arg-type]
    )
    assert r.status_code == 403
    r = await s.call("POST", "/v1/accounts", json=body, role="service", subject="sync")
    assert r.status_code == 403


async def test_address_outside_everything_is_a_clear_error(stack: Stack) -> None:
    r = await stack.call(
        "POST", "/v1/accounts", json={"address": "x@unknown.example", "password": "pw"}
    )
    assert r.status_code == 422 and code(r) == "servers_not_found", r.text
    assert "give incoming and outgoing servers or a preset_id" in r.json()["error"]["message"]
