"""Sync against a real Dovecot: new mail reported once (polling and IDLE), vanished mail,
UIDVALIDITY reset, catch-up after downtime, disabled and deleted accounts."""

# ruff: noqa: F811 -- pytest fixtures imported from test_sync_support are parameters here

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from libs.common.natsserver import NatsServer
from tests.integration.test_sync_support import (  # noqa: F401 -- fixtures
    SyncHarness,
    close_harness,
    harness,
    open_harness,
    raw_mail,
    settle,
    sync_env,
)
from tests.support.dovecot import Dovecot

pytestmark = [pytest.mark.connected]


async def test_new_mail_is_reported_once_with_metadata_only(
    harness: SyncHarness, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw, folders=["INBOX", "Archive"])
    await harness.wait_state(acc, "online")
    assert [e.data["status"] for e in harness.events("AccountStatusChanged", acc)] == [
        "syncing",
        "online",
    ]
    uid1 = dovecot.deliver(user, raw_mail("first", to="a@example.test, B <b@example.test>"))
    uid2 = dovecot.deliver(user, raw_mail("second"), folder="Archive")
    got = await harness.wait_event("MessageReceived", acc, count=2)
    by_subject = {e.data["subject"]: e.data for e in got}
    first = by_subject["first"]
    assert first["uid"] == uid1 and first["folder"] == "INBOX"
    assert first["from"] == "Sender <sender@example.test>"
    assert first["to"] == ["a@example.test", "b@example.test"]
    assert first["message_id"] == "<first@example.test>"
    assert first["date"].startswith("2024-01-01T10:00:00")
    assert first["size"] > 0 and first["uidvalidity"] > 0
    assert by_subject["second"]["folder"] == "Archive" and by_subject["second"]["uid"] == uid2
    assert "secret body" not in str([e.model_dump() for e in harness.seen])
    # More polls (forced and on the 1 s interval) report nothing twice.
    await harness.force(acc)
    await settle(2.5)
    assert len(harness.events("MessageReceived", acc)) == 2
    detail = await harness.status(acc)
    assert detail["message_count"] == 2
    assert {f["folder"]: f["known"] for f in detail["folders"]} == {"INBOX": 1, "Archive": 1}
    assert detail["quota"] is not None and detail["quota"]["limit_kb"] > 0
    assert detail["status"]["last_success_at"] and detail["status"]["next_sync_at"]


async def test_idle_reports_new_mail_within_two_seconds(
    harness: SyncHarness, dovecot: Dovecot
) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw, interval=600)
    await harness.wait_state(acc, "online")

    async def idling() -> bool:
        return bool((await harness.status(acc))["status"]["idle"])

    from tests.support.stack import wait_until

    await wait_until(idling, timeout=5)
    await settle(0.3)  # IDLE issued
    for i in range(3):
        t0 = time.monotonic()
        uid = dovecot.deliver(user, raw_mail(f"pushed {i}"))
        got = await harness.wait_event(
            "MessageReceived",
            acc,
            lambda d, u=uid: d["uid"] == u,
            timeout=5,  # type: ignore[misc]
        )
        assert got and time.monotonic() - t0 < 2.0
    assert harness.engine.watchers[("acme", acc)].logins == 1  # one connection throughout


async def test_deleted_message_is_reported_missing(harness: SyncHarness, dovecot: Dovecot) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw)
    await harness.wait_state(acc, "online")
    uids = [dovecot.deliver(user, raw_mail(f"m{i}")) for i in range(3)]
    await harness.wait_event("MessageReceived", acc, count=3)
    dovecot.delete_message(user, uids[1])
    got = await harness.wait_event("MailMissingDetected", acc, lambda d: d["kind"] == "vanished")
    assert got[0].data["uids"] == [uids[1]] and got[0].data["folder"] == "INBOX"
    await settle(1.5)
    assert len(harness.events("MailMissingDetected", acc)) == 1
    assert (await harness.status(acc))["folders"][0]["known"] == 2


async def test_uidvalidity_reset_is_reported_and_rebaselined(
    harness: SyncHarness, dovecot: Dovecot
) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw, folders=["Work"])
    dovecot.create_folder(user, "Work")
    await harness.wait_state(acc, "online")
    dovecot.deliver(user, raw_mail("before reset"), folder="Work")
    await harness.wait_event("MessageReceived", acc)
    old = (await harness.status(acc))["folders"][0]["uidvalidity"]
    dovecot.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(old + 1000), "Work")
    got = await harness.wait_event(
        "MailMissingDetected", acc, lambda d: d["kind"] == "uidvalidity_reset"
    )
    assert got[0].data["folder"] == "Work"
    folder = (await harness.status(acc))["folders"][0]
    assert folder["uidvalidity"] == old + 1000 and folder["known"] == 1
    await settle(1.0)
    assert len(harness.events("MessageReceived", acc)) == 1  # not announced again
    dovecot.deliver(user, raw_mail("after reset"), folder="Work")
    got = await harness.wait_event("MessageReceived", acc, count=2)
    assert got[-1].data["uidvalidity"] == old + 1000


async def test_catch_up_after_the_service_was_stopped(
    tmp_path: Path, nats_server: NatsServer, dovecot: Dovecot, sync_env: dict[str, str]
) -> None:
    user, pw = dovecot.new_user()
    h = await open_harness(tmp_path, nats_server)
    try:
        acc = await h.add_account(dovecot, user, pw)
        await h.wait_state(acc, "online")
        dovecot.deliver(user, raw_mail("before"))
        await h.wait_event("MessageReceived", acc)
    finally:
        await close_harness(h)
    arrived = [dovecot.deliver(user, raw_mail(f"while down {i}")) for i in range(5)]
    h2 = await open_harness(tmp_path, nats_server, h.creds)
    try:
        got = await h2.wait_event("MessageReceived", acc, count=5)
        await settle(1.5)
        uids = [e.data["uid"] for e in h2.events("MessageReceived", acc)]
        assert sorted(uids) == arrived  # no gap, no duplicate, nothing from before
        assert len(got) == 5
    finally:
        await close_harness(h2)


async def test_disabled_account_stops_being_watched(harness: SyncHarness, dovecot: Dovecot) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw)
    await harness.wait_state(acc, "online")
    await harness.disable(acc)
    await harness.wait_state(acc, "disabled")
    await asyncio.sleep(0.2)
    assert ("acme", acc) not in harness.engine.watchers
    logins = harness.engine.stats.logins
    uid = dovecot.deliver(user, raw_mail("while disabled"))
    await settle(2.0)
    assert harness.events("MessageReceived", acc) == []
    assert harness.engine.stats.logins == logins
    r = await harness.stack.call("POST", f"/v1/accounts/{acc}/sync")
    assert r.status_code == 409
    await harness.reactivate(acc)
    await harness.wait_state(acc, "online")
    got = await harness.wait_event("MessageReceived", acc)  # caught up on reactivation
    assert got[0].data["uid"] == uid
    states = [e.data["status"] for e in harness.events("AccountStatusChanged", acc)]
    assert states == ["syncing", "online", "disabled", "syncing", "online"]


async def test_deleted_account_is_forgotten(harness: SyncHarness, dovecot: Dovecot) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw)
    await harness.wait_state(acc, "online")
    await harness.delete(acc)

    async def gone() -> bool:
        return (await harness.status(acc)).get("http") == 404

    from tests.support.stack import wait_until

    await wait_until(gone, timeout=10)
    await asyncio.sleep(0.2)
    assert ("acme", acc) not in harness.engine.watchers
    r = await harness.stack.call("GET", f"/v1/sync/mailboxes/{acc}/history")
    assert r.status_code == 404
