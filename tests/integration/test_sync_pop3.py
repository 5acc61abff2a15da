"""POP3 by UIDL against a real Dovecot, honouring leave-on-server."""

# ruff: noqa: F811 -- pytest fixtures imported from test_sync_support are parameters here

from __future__ import annotations

import pytest

from tests.integration.test_sync_support import (  # noqa: F401 -- fixtures
    SyncHarness,
    harness,
    raw_mail,
    settle,
    sync_env,
)
from tests.support.dovecot import Dovecot

pytestmark = [pytest.mark.connected]


async def test_pop3_reports_new_mail_by_uidl_and_leaves_it_on_the_server(
    harness: SyncHarness, dovecot: Dovecot
) -> None:
    user, pw = dovecot.new_user()
    dovecot.deliver(user, raw_mail("already there"))
    acc = await harness.add_account(dovecot, user, pw, protocol="pop3", security="starttls")
    await harness.wait_state(acc, "online")
    dovecot.deliver(user, raw_mail("pop one"))
    dovecot.deliver(user, raw_mail("pop two"))
    got = await harness.wait_event("MessageReceived", acc, count=2)
    assert [e.data["subject"] for e in got] == ["pop one", "pop two"]
    assert [e.data["uid"] for e in got] == [2, 3]  # sync's own numbers after the baseline
    assert all(e.data["uidl"] and e.data["uidvalidity"] == 0 for e in got)
    assert got[0].data["size"] > 0 and got[0].data["from"] == "Sender <sender@example.test>"
    await settle(1.5)
    assert len(harness.events("MessageReceived", acc)) == 2
    assert len(dovecot.uids(user)) == 3  # nothing deleted
    dovecot.delete_message(user, dovecot.uids(user)[1])
    missing = await harness.wait_event("MailMissingDetected", acc)
    assert missing[0].data["kind"] == "vanished" and missing[0].data["uids"] == [2]


async def test_pop3_deletes_only_when_the_account_says_so(
    harness: SyncHarness, dovecot: Dovecot
) -> None:
    user, pw = dovecot.new_user()
    acc = await harness.add_account(
        dovecot, user, pw, protocol="pop3", security="ssl", leave_on_server=False
    )
    await harness.wait_state(acc, "online")
    dovecot.deliver(user, raw_mail("fetch and delete"))
    got = await harness.wait_event("MessageReceived", acc)
    assert got[0].data["subject"] == "fetch and delete"

    async def emptied() -> bool:
        return dovecot.uids(user) == []

    from tests.support.stack import wait_until

    await wait_until(emptied, timeout=5)
    await settle(1.5)
    assert harness.events("MailMissingDetected", acc) == []  # the hub deleted it: not missing
    assert len(harness.events("MessageReceived", acc)) == 1
