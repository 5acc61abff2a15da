"""Fault tests: kill -9 the nats-server or a consuming service mid-stream; nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from libs.common.natsserver import NatsServer, free_port
from libs.common.store.database import Database
from services.audit.tables import entries
from services.audit.tables import metadata as audit_metadata
from tests.support.stack import start_stack, wait_until

pytestmark = [pytest.mark.connected, pytest.mark.chaos]

COMMANDS = 5000


async def _post_all(stack: Any, n: int, on_progress: Any) -> dict[str, str]:
    """Add n employees with 16 concurrent clients; return {employee id: email} of the 2xx."""
    ok: dict[str, str] = {}
    queue = iter(range(n))

    async def client() -> None:
        for i in queue:
            email = f"p{i}@crash.example"
            r = await stack.call("POST", "/v1/employees", json={"name": f"P {i}", "email": email})
            if r.status_code == 201:
                ok[r.json()["id"]] = email
            else:
                assert r.status_code < 500, r.text
            await on_progress(i)

    await asyncio.gather(*(client() for _ in range(16)))
    return ok


async def _audited(db: Database) -> dict[str, int]:
    async with db.read() as conn:
        q = select(entries.c.aggregate_id, func.count()).group_by(entries.c.aggregate_id)
        return {agg: n for agg, n in await conn.execute(q)}


async def test_kill_nats_mid_stream_loses_nothing(tmp_path: Path, nats_server: NatsServer) -> None:
    stack = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    killed = asyncio.Event()

    async def chaos(i: int) -> None:
        if i == COMMANDS // 3 and not killed.is_set():
            killed.set()
            nats_server.kill()  # kill -9, mid-stream
            await asyncio.sleep(1.0)
            nats_server.start()  # same port, same store

    try:
        ok = await _post_all(stack, COMMANDS, chaos)
        assert killed.is_set()
        assert len(ok) == COMMANDS  # commands commit to the service's database, not to NATS
        audit_db = stack.host.service("audit").db

        async def all_audited() -> bool:
            return len(await _audited(audit_db)) >= len(ok)

        await wait_until(all_audited, timeout=120, interval=0.5)
        audited = await _audited(audit_db)
        assert set(audited) == set(ok)  # every acknowledged command reached the audit store
        assert set(audited.values()) == {1}  # exactly once
        verify = (await stack.call("GET", "/v1/audit/verify")).json()
        assert verify["ok"] and verify["checked"] == COMMANDS
    finally:
        await stack.client.aclose()
        await stack.host.stop()


def _run_audit(tmp_path: Path, nats_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MAILROOM_NATS_URL": nats_url,
        "MAILROOM_DATA_DIR": str(tmp_path / "audit-data"),
        "MAILROOM_HTTP_PORT": str(port),
    }
    env.pop("MAILROOM_DATABASE_URL", None)
    log = open(tmp_path / "audit.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "services.audit"], env=env, stdout=log, stderr=log
    )


async def test_kill_a_consuming_service_and_restart(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The audit service runs as its own process (as a pod); kill -9 it while it consumes."""
    stack = await start_stack(tmp_path, nats_server, ("registry",))
    port = free_port()
    proc = _run_audit(tmp_path, nats_server.url, port)
    audit_db = Database(
        f"sqlite+aiosqlite:///{(tmp_path / 'audit-data' / 'audit.db').resolve()}", audit_metadata
    )
    try:
        total = 1500
        killed = False

        async def maybe_kill(i: int) -> None:
            nonlocal proc, killed
            if i == total // 2 and not killed:
                await wait_until(lambda: _some_audited(audit_db), timeout=30)
                killed = True
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                proc = _run_audit(tmp_path, nats_server.url, port)

        ok = await _post_all(stack, total, maybe_kill)
        assert killed and len(ok) == total

        async def all_audited() -> bool:
            return len(await _audited(audit_db)) >= total

        await wait_until(all_audited, timeout=120, interval=0.5)
        audited = await _audited(audit_db)
        assert set(audited) == set(ok) and set(audited.values()) == {1}
    finally:
        proc.terminate()
        proc.wait(20)
        await audit_db.dispose()
        await stack.client.aclose()
        await stack.host.stop()


async def _some_audited(db: Database) -> bool:
    try:
        return len(await _audited(db)) > 0
    except Exception:  # the audit process has not created its tables yet
        return False
