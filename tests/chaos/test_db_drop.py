"""Database connections dropped during commits (PostgreSQL backends terminated under load)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import asyncpg
import pytest

from libs.common.natsserver import NatsServer
from tests.chaos.test_nats_crash import _audited
from tests.support.infra import PG_URL_ENV
from tests.support.registry import imap_account
from tests.support.stack import start_stack, wait_until

pytestmark = [pytest.mark.connected, pytest.mark.chaos, pytest.mark.postgres]

TOTAL = 400


async def _terminator(dbname: str, stop: asyncio.Event, rounds: int = 12) -> int:
    """Terminate every connection of the registry's database, every 0.4 s, ``rounds`` times."""
    dsn = os.environ[PG_URL_ENV].replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    killed = 0
    try:
        for _ in range(rounds):
            if stop.is_set():
                break
            rows = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                dbname,
            )
            killed += sum(1 for r in rows if r[0])
            await asyncio.sleep(0.4)
    finally:
        await admin.close()
    return killed


async def test_dropped_connections_during_commits_lose_and_double_nothing(
    tmp_path: Path, nats_server: NatsServer, pg_service_url: str
) -> None:
    stack = await start_stack(
        tmp_path, nats_server, ("registry", "audit"), database_url=pg_service_url
    )
    registry_db = pg_service_url.replace("{service}", "registry").rpartition("/")[2]
    stop = asyncio.Event()
    terminator = asyncio.create_task(_terminator(registry_db, stop))
    statuses: list[int] = []
    ids: dict[str, str] = {}
    try:
        queue = iter(range(TOTAL))

        async def client() -> None:
            for i in queue:
                key = f"key-{i}"
                body = imap_account(f"box{i}@drop.example")
                for _attempt in range(40):
                    r = await stack.call(
                        "POST", "/v1/accounts", json=body, headers={"Idempotency-Key": key}
                    )
                    statuses.append(r.status_code)
                    assert r.status_code != 500, r.text
                    if r.status_code in (200, 201):
                        ids[key] = r.json()["id"]
                        break
                    assert r.status_code == 503, r.text  # database gone: retry, same key
                    await asyncio.sleep(min(0.05 * 2**_attempt, 1.0))
                else:
                    pytest.fail(f"{key} never succeeded")

        await asyncio.gather(*(client() for _ in range(8)))
    finally:
        stop.set()
        killed = await terminator
    assert killed > 0 and 503 in statuses  # the fault really happened
    assert len(ids) == TOTAL and len(set(ids.values())) == TOTAL
    try:
        audit_db = stack.host.service("audit").db

        async def all_audited() -> bool:
            return len(await _audited(audit_db)) >= TOTAL

        try:
            await wait_until(all_audited, timeout=60, interval=0.5)
        finally:
            reg = stack.host.service("registry")
            print(
                "DEBUG outbox depth",
                await reg.relay.depth(),
                "published",
                reg.relay.published,
                "audited",
                len(await _audited(audit_db)),
                "stats",
                stack.host.service("audit").consumers[0].stats,
            )
        audited = await _audited(audit_db)
        assert set(audited) == set(ids.values()) and set(audited.values()) == {1}
        r = await stack.call("GET", "/v1/accounts", params={"limit": 100})
        assert r.status_code == 200
    finally:
        with contextlib.suppress(Exception):
            await stack.client.aclose()
        await stack.host.stop()
