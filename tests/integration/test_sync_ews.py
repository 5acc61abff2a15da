"""Sync of Exchange / Office 365 mailboxes over EWS, through sync's public interfaces (registry
events in, sync events and the status API out).

Exchange cannot run here: the server is tests/support/ews_server.py, a local HTTPS server on
loopback that answers with EWS responses as Exchange 2016 sends them (SyncFolderItems, GetItem,
FindFolder, the ErrorServerBusy fault) and checks each request's operation, mailbox and
authentication; it also plays Microsoft Entra ID's token endpoint for app-only access.
"""

# ruff: noqa: F811 -- pytest fixtures are parameters here

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.common.events import AccountAdded, AccountSettings, CredentialRef, Server
from libs.common.ids import new_id
from libs.common.natsserver import NatsServer
from tests.integration.test_sync_support import (
    FAST,
    SyncHarness,
    close_harness,
    open_harness,
    raw_mail,
    settle,
)
from tests.support.ews_server import EwsServer, ews_server  # noqa: F401 -- fixture
from tests.support.tlsca import session_pki

pytestmark = [pytest.mark.connected]
ALICE = "alice@corp.example"


@pytest.fixture
def ews_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {**FAST, "MAILROOM_SYNC_CA_FILE": str(session_pki().ca_path)}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
async def harness(
    tmp_path: Path, nats_server: NatsServer, ews_env: None
) -> AsyncIterator[SyncHarness]:
    h = await open_harness(tmp_path, nats_server)
    try:
        yield h
    finally:
        await close_harness(h)


async def add_ews(
    h: SyncHarness,
    server: EwsServer,
    address: str,
    username: str,
    secret: str,
    *,
    protocol: str = "exchange",
    auth_mode: str = "password",
    folders: list[str] | None = None,
) -> str:
    account_id = new_id()
    settings = AccountSettings(
        incoming=Server(
            protocol="ews", host="127.0.0.1", port=server.port, security="ssl", url=server.url
        ),
        username=username,
        auth_mode=auth_mode,
        polling_interval_s=1,
        folders=folders or ["INBOX"],
    )
    h.creds.set(h.tenant, account_id, username, secret)
    ref = CredentialRef(blob_id=new_id(), version=1, kek_version=1)
    event = AccountAdded(address=address, protocol=protocol, settings=settings, credential=ref)
    await h.publish(account_id, event)
    return account_id


async def test_new_mail_is_reported_once_with_metadata_and_vanished_mail(
    harness: SyncHarness, ews_server: EwsServer
) -> None:
    password = ews_server.add_mailbox(ALICE, "CORP\\alice")
    ews_server.add_folder(ALICE, "Projects")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    ews_server.deliver(ALICE, raw_mail("already there"), received=an_hour_ago)  # known, not news
    acc = await add_ews(
        harness, ews_server, ALICE, "CORP\\alice", password, folders=["INBOX", "Projects"]
    )
    await harness.wait_state(acc, "online")
    first = ews_server.deliver(ALICE, raw_mail("first", to="a@example.test, B <b@example.test>"))
    ews_server.deliver(ALICE, raw_mail("second"), folder="Projects")
    got = await harness.wait_event("MessageReceived", acc, count=2)
    by_subject = {e.data["subject"]: e.data for e in got}
    one = by_subject["first"]
    assert one["folder"] == "INBOX" and one["uidl"] == first and one["uidvalidity"] == 0
    assert one["from"] == "Sender <sender@example.test>"
    assert one["to"] == ["a@example.test", "b@example.test"]
    assert one["message_id"] == "<first@example.test>"
    assert one["date"].startswith("2024-01-01T10:00:00") and one["size"] > 0
    assert by_subject["second"]["folder"] == "Projects"
    assert "secret body" not in str([e.model_dump() for e in harness.seen])
    await harness.force(acc)
    await settle(2.0)
    assert len(harness.events("MessageReceived", acc)) == 2
    ews_server.delete(ALICE, first)
    missing = await harness.wait_event("MailMissingDetected", acc)
    assert missing[0].data["kind"] == "vanished" and missing[0].data["uids"] == [one["uid"]]
    detail = await harness.status(acc)
    assert {f["folder"]: f["known"] for f in detail["folders"]} == {"INBOX": 1, "Projects": 1}
    assert set(ews_server.ops()) == {"FindFolder", "GetFolder", "SyncFolderItems", "GetItem"}
    assert {r.auth for r in ews_server.requests} == {"basic:CORP\\alice"}
    assert {r.mailbox for r in ews_server.requests} == {ALICE} and not ews_server.violations
    assert password not in str([e.model_dump() for e in harness.seen])


async def test_wrong_password_is_auth_failed_without_a_tight_loop(
    harness: SyncHarness, ews_server: EwsServer
) -> None:
    ews_server.add_mailbox(ALICE, "CORP\\alice", password="right-one")
    acc = await add_ews(harness, ews_server, ALICE, "CORP\\alice", "wrong-one")
    doc = await harness.wait_state(acc, "auth_failed")
    assert "refused the username or password" in doc["status"]["last_error"]
    failed = await harness.wait_event("SyncFailed", acc)
    assert failed[0].data["reason_class"] == "auth"
    await settle(2.0)
    assert len(harness.events("SyncFailed", acc)) == 1  # long back-off: no second attempt
    harness.creds.set(harness.tenant, acc, "CORP\\alice", "right-one")
    await harness.rotate(acc)
    await harness.wait_state(acc, "online")
    assert await harness.wait_event("SyncRecovered", acc)


async def test_throttling_goes_offline_and_recovers_without_losing_mail(
    harness: SyncHarness, ews_server: EwsServer
) -> None:
    password = ews_server.add_mailbox(ALICE, "CORP\\alice")
    acc = await add_ews(harness, ews_server, ALICE, "CORP\\alice", password)
    await harness.wait_state(acc, "online")
    ews_server.busy = 2  # the next two requests get ErrorServerBusy
    ews_server.deliver(ALICE, raw_mail("during throttling"))
    failed = await harness.wait_event("SyncFailed", acc)
    assert failed[0].data["reason_class"] == "network"
    assert "ErrorServerBusy" in failed[0].data["detail"]
    await harness.wait_event("SyncRecovered", acc)
    got = await harness.wait_event("MessageReceived", acc)
    assert got[0].data["subject"] == "during throttling"
    await settle(1.5)
    assert len(harness.events("MessageReceived", acc)) == 1


async def test_restart_and_lost_sync_state_catch_up_without_gap_or_duplicate(
    tmp_path: Path, nats_server: NatsServer, ews_server: EwsServer, ews_env: None
) -> None:
    password = ews_server.add_mailbox(ALICE, "CORP\\alice")
    h = await open_harness(tmp_path, nats_server)
    try:
        acc = await add_ews(h, ews_server, ALICE, "CORP\\alice", password)
        await h.wait_state(acc, "online")
        ews_server.deliver(ALICE, raw_mail("before"))
        await h.wait_event("MessageReceived", acc)
    finally:
        await close_harness(h)
    for i in range(3):
        ews_server.deliver(ALICE, raw_mail(f"while down {i}"))
    h2 = await open_harness(tmp_path, nats_server, h.creds)
    try:
        got = await h2.wait_event("MessageReceived", acc, count=3)
        assert sorted(e.data["subject"] for e in got) == [f"while down {i}" for i in range(3)]
        ews_server.invalidate_sync_states()  # Exchange refuses the saved state: sync again
        ews_server.deliver(ALICE, raw_mail("after the reset"))
        await h2.wait_event("MessageReceived", acc, count=4)
        await settle(1.5)
        subjects = [e.data["subject"] for e in h2.events("MessageReceived", acc)]
        assert sorted(subjects) == sorted(
            [f"while down {i}" for i in range(3)] + ["after the reset"]
        )
        uids = [e.data["uid"] for e in h2.events("MessageReceived", acc)]
        assert len(set(uids)) == 4 and 1 not in uids  # "before" kept uid 1
    finally:
        await close_harness(h2)


async def test_office365_shared_mailbox_with_app_only_access(
    harness: SyncHarness, ews_server: EwsServer
) -> None:
    ews_server.add_mailbox("shared@corp.example")
    secret = ews_server.app_secret("tenant-1", "app-1", "shared@corp.example")
    acc = await add_ews(
        harness, ews_server, "shared@corp.example", "shared@corp.example", secret,
        protocol="office365", auth_mode="oauth2",
    )  # fmt: skip
    await harness.wait_state(acc, "online")
    ews_server.deliver("shared@corp.example", raw_mail("to the team"))
    got = await harness.wait_event("MessageReceived", acc)
    assert got[0].data["subject"] == "to the team"
    assert {r.auth for r in ews_server.requests} == {"bearer:app:app-1"}
    assert {r.mailbox for r in ews_server.requests} == {"shared@corp.example"}
    assert len(ews_server.token_requests) == 1 and not ews_server.violations  # token cached
    ews_server.tokens.clear()  # the token was revoked: a new one, no auth failure
    ews_server.deliver("shared@corp.example", raw_mail("after a revoked token"))
    await harness.wait_event("MessageReceived", acc, count=2)
    assert len(ews_server.token_requests) == 2
    assert harness.events("SyncFailed", acc) == []
