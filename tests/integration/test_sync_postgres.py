"""The sync store on PostgreSQL: mail reported once, vanished mail, disable, forced sync."""

# ruff: noqa: F811 -- pytest fixtures imported from test_sync_support are parameters here

from __future__ import annotations

from pathlib import Path

import pytest

from libs.common.natsserver import NatsServer
from tests.integration.test_sync_support import (  # noqa: F401 -- fixtures
    close_harness,
    open_harness,
    raw_mail,
    settle,
    sync_env,
)
from tests.support.dovecot import Dovecot

pytestmark = [pytest.mark.connected, pytest.mark.postgres]


async def test_sync_on_postgresql(
    tmp_path: Path,
    nats_server: NatsServer,
    dovecot: Dovecot,
    sync_env: dict[str, str],
    pg_url: str,
) -> None:
    h = await open_harness(tmp_path, nats_server, database_url=pg_url, services=("sync",))
    try:
        user, pw = dovecot.new_user()
        acc = await h.add_account(dovecot, user, pw, folders=["INBOX", "Archive"])
        await h.wait_state(acc, "online")
        uids = [dovecot.deliver(user, raw_mail(f"pg {i}")) for i in range(3)]
        dovecot.deliver(user, raw_mail("pg archived"), folder="Archive")
        await h.wait_event("MessageReceived", acc, count=4)
        dovecot.delete_message(user, uids[0])
        got = await h.wait_event("MailMissingDetected", acc)
        assert got[0].data["uids"] == [uids[0]]
        await h.force(acc)
        await settle(1.0)
        assert len(h.events("MessageReceived", acc)) == 4
        await h.disable(acc)
        await h.wait_state(acc, "disabled")
    finally:
        await close_harness(h)
