"""Retiring a KEK while credentials sealed under it are still being written.

A CSV import writes its rows in one transaction per chunk; a chunk seals every credential under
the KEK active when it starts. If a rotation and the retirement of that KEK run before the chunk
commits, the rotation cannot see the chunk's blobs and a count made outside the writers' lock
does not either: the key would be dropped and every credential of the chunk lost (it was, on
PostgreSQL, all 500 of them). Here an import runs while the key is rotated and retired over and
over: afterwards every blob is wrapped under a version the ring still holds, and the imported
accounts lease their own secrets.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
from pathlib import Path

import pytest

from libs.common.leases import lease_credential
from libs.common.nats import connect
from libs.common.natsserver import NatsServer
from tests.support.registry import stop
from tests.support.stack import Stack, start_stack

pytestmark = [pytest.mark.connected, pytest.mark.chaos]

ROWS = 500  # one import chunk


def import_body(rows: int) -> tuple[str, dict[str, str]]:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["address", "protocol", "incoming_host", "incoming_port", "incoming_security",
                  "outgoing_host", "outgoing_port", "outgoing_security", "password"])  # fmt: skip
    secrets = {}
    for i in range(rows):
        address, secret = f"r{i}@example.com", f"secret-{i}-{random.random()}"
        out.writerow([address, "imap", "imap.example.com", 993, "ssl",
                      "smtp.example.com", 587, "starttls", secret])  # fmt: skip
        secrets[address] = secret
    return buf.getvalue(), secrets


async def churn(s: Stack, done: asyncio.Event, log: list[tuple[int, int, int]]) -> None:
    """Rotate (a new KEK) and retire the previous one, again and again."""
    while not done.is_set():
        r = await s.call("POST", "/v1/admin/keys/rotate")
        assert r.status_code == 200, r.text
        version = r.json()["active_version"]
        retire = await s.call("POST", "/v1/admin/keys/retire", json={"version": version - 1})
        assert retire.status_code in (200, 409), retire.text  # 409: still in use, refused
        log.append((version, r.json()["rewrapped"], retire.status_code))


async def scenario(tmp_path: Path, nats: NatsServer, database_url: str | None) -> None:
    s = await start_stack(tmp_path, nats, ("registry", "audit"), database_url)
    nc = await connect(nats.url, name="retire-race")
    try:
        body, secrets = import_body(ROWS)
        done, log = asyncio.Event(), list[tuple[int, int, int]]()
        task = asyncio.create_task(churn(s, done, log))
        r = await s.call("POST", "/v1/accounts/import", content=body,
                         headers={"Content-Type": "text/csv"})  # fmt: skip
        done.set()
        await task
        assert r.status_code == 200 and r.json()["created"] == ROWS, r.text
        assert log, "the key was never rotated during the import"
        keys = (await s.call("GET", "/v1/admin/keys")).json()
        held = {str(v) for v in keys["versions"]}
        assert set(keys["blobs_by_version"]) <= held, (keys, log)  # every blob can be opened
        rows = r.json()["rows"]
        for row in [rows[0], rows[-1], *random.sample(rows, 20)]:
            lease = await lease_credential(nc, "acme", row["account_id"], "sync", "race")
            assert lease.secret.get_secret_value() == secrets[row["address"]]
    finally:
        await nc.close()
        await stop(s)


async def test_retire_during_an_import_loses_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    await scenario(tmp_path, nats_server, None)


@pytest.mark.postgres
async def test_retire_during_an_import_loses_nothing_on_postgres(
    tmp_path: Path, nats_server: NatsServer, pg_service_url: str
) -> None:
    await scenario(tmp_path, nats_server, pg_service_url)
