"""Two sender replicas on one PostgreSQL database: the daily limit and the Idempotency-Key
hold across them (the mailbox row lock serialises their checks)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from libs.common.natsserver import NatsServer
from tests.integration.test_sender_support import FAST, SenderWorld
from tests.support.smtpd import SmtpServer
from tests.support.stack import start_stack

pytestmark = [pytest.mark.connected, pytest.mark.postgres]


async def test_limit_and_idempotency_hold_across_replicas(
    tmp_path: Path,
    nats_server: NatsServer,
    smtpd: SmtpServer,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAILROOM_SENDER_CA_FILE", str(smtpd.ca_path))
    worlds = [
        SenderWorld(
            await start_stack(tmp_path / name, nats_server, ("sender",), database_url=pg_url),
            smtpd,
        )
        for name in ("a", "b")
    ]
    a, b = worlds
    try:
        b.creds.by_mailbox = a.creds.by_mailbox  # both replicas lease the same credentials
        mb = await a.mailbox(daily_send_limit=5)
        await b.known(mb)
        results = await asyncio.gather(*(w.send(mb) for w in worlds * 8))
        codes = [r.status_code for r in results]
        assert codes.count(201) == 5 and codes.count(429) == 11, codes
        same = await asyncio.gather(*(w.send(mb, "twice", to=["x@example.com"]) for w in worlds))
        assert {r.status_code for r in same} == {429}  # the limit holds for the key too
        mb2 = await a.mailbox()
        await b.known(mb2)
        same = await asyncio.gather(*(w.send(mb2, "once") for w in worlds * 3))
        assert {r.status_code for r in same} <= {201, 202}
        assert len({r.json()["id"] for r in same}) == 1
        await asyncio.sleep(0.5)
        assert len(smtpd.messages) == 6
    finally:
        for w in worlds:
            await w.stack.client.aclose()
            await w.stack.host.stop()
