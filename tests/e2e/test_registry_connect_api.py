"""``POST /v1/accounts/test`` and ``POST /v1/accounts/{id}/test`` against Dovecot and aiosmtpd:
a real connection, a structured result per step, the stored secret opened in-process only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.common.natsserver import NatsServer
from services.registry.settings import RegistrySettings
from tests.support.dovecot import Dovecot
from tests.support.registry import audit_types, create, start_custom, stop
from tests.support.smtpd import SmtpServer
from tests.support.stack import Stack
from tests.support.tlsca import session_pki

pytestmark = [pytest.mark.connected, pytest.mark.e2e]


async def make(tmp: Path, nats: NatsServer, allow_private: bool) -> Stack:
    settings = RegistrySettings(
        ca_file=session_pki().ca_path,  # production trusts the system store only
        allow_private_targets=allow_private,
        connect_timeout_s=3,
    )
    return await start_custom(tmp, nats, registry_settings=settings)


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    s = await make(tmp_path, nats_server, True)
    try:
        yield s
    finally:
        await stop(s)


def account(dovecot: Dovecot, smtpd: SmtpServer, user: str, password: str) -> dict[str, Any]:
    smtpd.add_user(user, password)
    return {
        "address": f"{user}@acme.example",
        "protocol": "imap",
        "incoming": {"host": "127.0.0.1", "port": dovecot.imaps_port, "security": "ssl"},
        "outgoing": {"host": "localhost", "port": smtpd.starttls_port, "security": "starttls"},
        "username": user,
        "password": password,
    }


async def test_unsaved_account_is_tested_and_nothing_stored(
    stack: Stack, dovecot: Dovecot, smtpd: SmtpServer
) -> None:
    user, password = dovecot.new_user()
    r = await stack.call("POST", "/v1/accounts/test", json=account(dovecot, smtpd, user, password))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["ok"] and password not in r.text
    assert [s["name"] for s in doc["incoming"]["steps"]] == [
        "dns", "tcp", "tls", "greeting", "login", "mailbox_select",
    ]  # fmt: skip
    assert [(s["name"], s["status"]) for s in doc["outgoing"]["steps"]] == [
        ("dns", "ok"), ("tcp", "ok"), ("tls", "ok"), ("greeting", "ok"), ("smtp_auth", "ok"),
    ]  # fmt: skip
    assert all(isinstance(s["elapsed_ms"], int) for s in doc["incoming"]["steps"])
    assert (await stack.call("GET", "/v1/accounts")).json()["items"] == []

    bad = account(dovecot, smtpd, user, password) | {"password": "wrong-one"}
    doc = (await stack.call("POST", "/v1/accounts/test", json=bad)).json()
    assert not doc["ok"]
    assert doc["incoming"]["failure"] == doc["outgoing"]["failure"] == "auth_failed"
    r = await stack.call(
        "POST", "/v1/accounts/test", json={"address": "x@acme.example", "protocol": "imap"}
    )
    assert r.status_code == 422  # as POST /v1/accounts would answer: no servers


async def test_saved_account_uses_its_stored_secret_in_process(
    stack: Stack, dovecot: Dovecot, smtpd: SmtpServer
) -> None:
    user, password = dovecot.new_user()
    a = await create(stack, account(dovecot, smtpd, user, password))
    r = await stack.call("POST", f"/v1/accounts/{a['id']}/test")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["ok"] and doc["account_id"] == a["id"] and password not in r.text
    names = await audit_types(stack, a["id"], 2)
    assert names == ["AccountAdded", "CredentialAccessed"]
    events = await stack.call("GET", "/v1/audit/events", params={"aggregate_id": a["id"]})
    accessed = events.json()["items"][1]["event"]
    assert accessed["data"]["by_service"] == "registry"
    assert accessed["data"]["purpose"] == "connection_test"
    assert accessed["actor"] == "admin:admin"

    # A password sent with the request is tested instead; the stored one is not opened.
    r = await stack.call("POST", f"/v1/accounts/{a['id']}/test", json={"password": "new-candidate"})
    assert r.json()["incoming"]["failure"] == "auth_failed"
    r = await stack.call(
        "POST",
        f"/v1/accounts/{a['id']}/test",
        params={"timeout_s": 2},
        role="employee",
        subject="e9",
    )
    assert r.status_code in (403, 404)
    r = await stack.call("POST", "/v1/accounts/nope/test", json={"password": "x"})
    assert r.status_code == 404


async def test_each_server_is_judged_on_its_own(
    stack: Stack, dovecot: Dovecot, smtpd: SmtpServer
) -> None:
    """Incoming and outgoing are checked with one credential: a mailbox whose SMTP login
    differs fails there, and says so."""
    user, password = dovecot.new_user()
    body = account(dovecot, smtpd, user, password)
    smtpd.set_password(user, "other")
    doc = (await stack.call("POST", "/v1/accounts/test", json=body)).json()
    assert doc["incoming"]["ok"] and not doc["outgoing"]["ok"]
    assert doc["outgoing"]["failure"] == "auth_failed"


async def test_loopback_is_refused_without_the_setting(
    tmp_path: Path, nats_server: NatsServer, dovecot: Dovecot, smtpd: SmtpServer
) -> None:
    s = await make(tmp_path, nats_server, False)
    try:
        user, password = dovecot.new_user()
        doc = (
            await s.call("POST", "/v1/accounts/test", json=account(dovecot, smtpd, user, password))
        ).json()
        assert doc["incoming"]["failure"] == "target_not_allowed"
        assert doc["incoming"]["steps"][0]["status"] == "failed"
        assert "MAILROOM_REGISTRY_ALLOW_PRIVATE_TARGETS" in doc["incoming"]["message"]
    finally:
        await stop(s)
