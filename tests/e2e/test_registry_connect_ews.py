"""Connection tests of Exchange and Office 365 accounts through the registry's HTTP API.

Exchange and Microsoft Entra ID cannot run here: the EWS endpoint and the token endpoint are the
local server of tests/support/ews_server.py (HTTPS on loopback with the test CA), which answers
with EWS responses as Exchange 2016 sends them and checks each request's operation, mailbox and
authentication (Basic, or the Bearer token it issued for client credentials).
"""

# ruff: noqa: F811 -- the ews_server fixture is a parameter here

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.natsserver import NatsServer
from services.registry.settings import RegistrySettings
from tests.support.ews_server import EwsServer, ews_server  # noqa: F401 -- fixture
from tests.support.registry import audit_types, create, start_custom, stop
from tests.support.stack import Stack
from tests.support.tlsca import session_pki

pytestmark = [pytest.mark.connected, pytest.mark.e2e]
ALICE = "alice@corp.example"


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    settings = RegistrySettings(
        ca_file=session_pki().ca_path, allow_private_targets=True, connect_timeout_s=5
    )
    s = await start_custom(tmp_path, nats_server, registry_settings=settings)
    try:
        yield s
    finally:
        await stop(s)


def exchange(server: EwsServer, password: str, **over: Any) -> dict[str, Any]:
    return {
        "address": ALICE,
        "protocol": "exchange",
        "incoming": {"url": server.url},
        "username": "CORP\\alice",
        "password": password,
        **over,
    }


def steps(check: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["status"]) for s in check["steps"]]


async def test_exchange_sign_in_is_tested_for_real(stack: Stack, ews_server: EwsServer) -> None:
    password = ews_server.add_mailbox(ALICE, "CORP\\alice")
    ews_server.deliver(ALICE, b"Subject: one\r\n\r\nx\r\n")
    r = await stack.call("POST", "/v1/accounts/test", json=exchange(ews_server, password))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["ok"] and doc["outgoing"] is None, doc["incoming"][
        "steps"
    ]  # EWS sends through the same endpoint
    assert steps(doc["incoming"]) == [
        ("dns", "skipped"), ("tcp", "ok"), ("tls", "ok"), ("login", "ok"), ("mailbox_select", "ok"),
    ]  # fmt: skip
    by_name = {s["name"]: s for s in doc["incoming"]["steps"]}
    assert "Inbox opened (1 messages)" == by_name["mailbox_select"]["message"]
    assert "signed in as CORP\\alice" in by_name["login"]["message"]
    assert ews_server.ops() == ["GetFolder"] and not ews_server.violations
    assert ews_server.requests[0].auth == "basic:CORP\\alice"
    assert password not in r.text

    bad = exchange(ews_server, "wrong-password")
    doc = (await stack.call("POST", "/v1/accounts/test", json=bad)).json()
    assert not doc["ok"] and doc["incoming"]["failure"] == "auth_failed"
    assert "refused the username or password" in doc["incoming"]["message"]
    assert dict(steps(doc["incoming"]))["mailbox_select"] == "skipped"


async def test_saved_account_throttling_disabled_ews_and_unknown_mailbox(
    stack: Stack, ews_server: EwsServer
) -> None:
    password = ews_server.add_mailbox(ALICE, "CORP\\alice")
    a = await create(stack, exchange(ews_server, password, username=ALICE))
    ews_server.users[ALICE] = (password, {ALICE})
    r = await stack.call("POST", f"/v1/accounts/{a['id']}/test")
    assert r.status_code == 200 and r.json()["ok"], r.text
    assert ews_server.requests[-1].mailbox == ALICE  # the address names the mailbox
    assert await audit_types(stack, a["id"], 2) == ["AccountAdded", "CredentialAccessed"]

    ews_server.busy = 1
    doc = (await stack.call("POST", f"/v1/accounts/{a['id']}/test")).json()
    assert doc["incoming"]["failure"] == "server_unavailable"
    assert "throttling" in doc["incoming"]["message"]

    ews_server.ews_disabled.add(ALICE)
    doc = (await stack.call("POST", f"/v1/accounts/{a['id']}/test")).json()
    assert doc["incoming"]["failure"] == "protocol_disabled"
    assert "EwsEnabled" in doc["incoming"]["message"]
    ews_server.ews_disabled.clear()

    ews_server.users["bob@corp.example"] = ("pw-bob", {"bob@corp.example"})
    other = exchange(ews_server, "pw-bob", address="bob@corp.example", username="bob@corp.example")
    doc = (await stack.call("POST", "/v1/accounts/test", json=other)).json()
    assert dict(steps(doc["incoming"])) == {
        "dns": "skipped", "tcp": "ok", "tls": "ok", "login": "ok", "mailbox_select": "failed",
    }  # fmt: skip
    assert doc["incoming"]["failure"] == "mailbox_unavailable"
    wrong_url = exchange(ews_server, password, incoming={"url": ews_server.authority + "/owa/"})
    doc = (await stack.call("POST", "/v1/accounts/test", json=wrong_url)).json()
    assert "there is no EWS service here" in doc["incoming"]["message"]
    assert doc["incoming"]["failure"] == "protocol_disabled"


async def test_office365_app_only_client_credentials(stack: Stack, ews_server: EwsServer) -> None:
    ews_server.add_mailbox("shared@corp.example")
    secret = ews_server.app_secret("tenant-1", "app-1", "shared@corp.example")
    body = {
        "address": "shared@corp.example",
        "protocol": "office365",
        "incoming": {"url": ews_server.url},
        "outgoing": {"url": ews_server.url},
        "auth_mode": "oauth2",
        "ownership": "shared",
        "password": secret,
    }
    r = await stack.call("POST", "/v1/accounts/test", json=body)
    doc = r.json()
    assert doc["ok"], r.text
    assert ews_server.requests[-1].auth == "bearer:app:app-1"
    assert ews_server.requests[-1].mailbox == "shared@corp.example"
    assert ews_server.token_requests[-1]["scope"] == f"https://127.0.0.1:{ews_server.port}/.default"
    assert not ews_server.violations
    client_secret = ews_server.apps[("tenant-1", "app-1")]
    assert client_secret not in r.text

    wrong = body | {"password": secret.replace(client_secret, "s~wrong")}
    doc = (await stack.call("POST", "/v1/accounts/test", json=wrong)).json()
    assert doc["incoming"]["failure"] == "auth_failed"
    assert "client id or secret" in doc["incoming"]["message"]
    assert "AADSTS7000215" in doc["incoming"]["steps"][3]["detail"]
    elsewhere = body | {"password": secret.replace(ews_server.authority, "https://evil.example")}
    doc = (await stack.call("POST", "/v1/accounts/test", json=elsewhere)).json()
    assert "neither Microsoft Entra ID nor the EWS server" in doc["incoming"]["message"]
