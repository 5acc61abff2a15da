"""Mailbox health against a real Dovecot: server down and back, a changed password (no tight
login loop), TLS trust, silence."""

# ruff: noqa: F811 -- pytest fixtures imported from test_sync_support are parameters here

from __future__ import annotations

from collections.abc import Callable
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
from tests.support.stack import wait_until

pytestmark = [pytest.mark.connected]


async def test_server_down_goes_offline_and_recovers_by_itself(
    harness: SyncHarness, dovecot_factory: Callable[..., Dovecot]
) -> None:
    server = dovecot_factory()
    user, pw = server.new_user()
    acc = await harness.add_account(server, user, pw)
    await harness.wait_state(acc, "online")
    server.stop()
    doc = await harness.wait_state(acc, "offline")
    assert doc["status"]["failure_class"] == "network" and doc["status"]["last_error"]
    scrape = (await harness.stack.client.get("/metrics")).text  # the gauge, from the table
    assert 'mailroom_sync_accounts{state="offline"} 1.0' in scrape
    failed = await harness.wait_event("SyncFailed", acc)
    assert failed[0].data["reason_class"] == "network" and failed[0].data["retry_in_s"] <= 1
    server.start()
    doc = await harness.wait_state(acc, "online")
    recovered = await harness.wait_event("SyncRecovered", acc)
    assert recovered[0].data["down_since"]
    assert doc["status"]["failures"] == 0 and doc["status"]["last_error"] is None
    uid = server.deliver(user, raw_mail("after restart"))
    got = await harness.wait_event("MessageReceived", acc)
    assert got[0].data["uid"] == uid
    r = await harness.stack.call("GET", f"/v1/sync/mailboxes/{acc}/history")
    states = [(x["previous"], x["state"]) for x in r.json()["items"]]
    assert states[:2] == [(None, "syncing"), ("syncing", "online")]
    assert ("online", "offline") in states and states[-1] == ("offline", "online")


async def test_changed_password_is_auth_failed_without_a_tight_loop(
    harness: SyncHarness, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw, interval=1)
    await harness.wait_state(acc, "online")
    dovecot.set_password(user, pw + "-new")
    await harness.rotate(acc)  # reconnects with the credential it has: the old password
    doc = await harness.wait_state(acc, "auth_failed")
    assert doc["status"]["failure_class"] == "auth"
    failed = await harness.wait_event("SyncFailed", acc, lambda d: d["reason_class"] == "auth")
    assert failed[0].data["retry_in_s"] >= 900  # long back-off for bad credentials
    watcher = harness.engine.watchers[("acme", acc)]
    logins = watcher.logins
    await settle(3.0)  # 3 polling intervals
    assert watcher.logins == logins  # not one more login attempt
    await harness.force(acc)  # an explicit request tries once
    await settle(0.5)
    assert watcher.logins == logins + 1
    await harness.wait_event("SyncFailed", acc, count=2)  # attempt 2 reported, then 4, 8, ...
    harness.creds.set("acme", acc, user, pw + "-new")
    await harness.rotate(acc, version=3)  # a new credential retries at once
    await harness.wait_state(acc, "online", timeout=5)
    await harness.wait_event("SyncRecovered", acc)


async def test_a_rotation_the_open_session_already_uses_does_not_log_in_again(
    harness: SyncHarness, dovecot: Dovecot
) -> None:
    """An OAuth2 token refreshed during a lease arrives as CredentialRotated after the watcher
    logged in with it: the open session stays. A newer version logs in again."""
    user, pw = dovecot.new_user()
    acc = await harness.add_account(dovecot, user, pw, interval=1)
    await harness.wait_state(acc, "online")
    watcher = harness.engine.watchers[("acme", acc)]
    harness.creds.set("acme", acc, user, pw, version=2)  # the next lease: version 2
    await harness.rotate(acc, version=2)  # newer than the session's: logs in with it

    async def on_version_2() -> bool:
        s = watcher.session
        return watcher.login_version == 2 and s is not None and s.alive

    await wait_until(on_version_2)
    logins = watcher.logins
    await harness.rotate(acc, version=2)  # e.g. the refresh this session already leased
    await settle(2.0)
    assert watcher.logins == logins and watcher.login_version == 2
    harness.creds.set("acme", acc, user, pw, version=3)
    await harness.rotate(acc, version=3)
    await settle(2.0)
    assert watcher.logins == logins + 1 and watcher.login_version == 3


async def test_tls_with_the_test_ca_and_untrusted_certificates(
    tmp_path: Path,
    nats_server: NatsServer,
    dovecot: Dovecot,
    sync_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, pw = dovecot.new_user()
    h = await open_harness(tmp_path / "trusted", nats_server)
    try:
        ssl_acc = await h.add_account(dovecot, user, pw, security="ssl")
        plain_acc = await h.add_account(dovecot, user, pw, security="none")
        await h.wait_state(ssl_acc, "online")
        await h.wait_state(plain_acc, "online")
    finally:
        await close_harness(h)
    monkeypatch.delenv("MAILROOM_SYNC_CA_FILE")  # the test CA is no longer trusted
    h = await open_harness(tmp_path / "untrusted", nats_server)
    try:
        acc = await h.add_account(dovecot, user, pw, security="starttls")
        doc = await h.wait_state(acc, "tls_error")
        assert "certificate" in doc["status"]["last_error"].lower()
        failed = await h.wait_event("SyncFailed", acc)
        assert failed[0].data["reason_class"] == "tls"
    finally:
        await close_harness(h)


async def test_silence_longer_than_expected_is_reported_once(
    tmp_path: Path,
    nats_server: NatsServer,
    dovecot: Dovecot,
    sync_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILROOM_SYNC_SILENCE_ALERT_S", "1.5")
    h = await open_harness(tmp_path, nats_server)
    try:
        user, pw = dovecot.new_user()
        acc = await h.add_account(dovecot, user, pw)
        got = await h.wait_event("MailMissingDetected", acc, lambda d: d["kind"] == "silence")
        assert "no mail for" in got[0].data["detail"]
        await settle(2.0)
        assert len(h.events("MailMissingDetected", acc)) == 1
        dovecot.deliver(user, raw_mail("breaks the silence"))
        await h.wait_event("MessageReceived", acc)
        await h.wait_event("MailMissingDetected", acc, count=2, timeout=6)  # silent again
    finally:
        await close_harness(h)
