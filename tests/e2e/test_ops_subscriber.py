"""examples/subscriber.py against the stack: it handles AccountAdded and EmployeeOffboarded."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from libs.common.natsserver import NatsServer
from tests.support.registry import create, imap_account, stop
from tests.support.stack import start_stack

pytestmark = [pytest.mark.connected, pytest.mark.e2e]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "subscriber.py"


async def test_example_subscriber_handles_typed_events(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    s = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    env = {**os.environ, "MAILROOM_NATS_URL": nats_server.url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--count",
        "2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await create(s, imap_account("ada@example.com"))
        r = await s.call("POST", "/v1/employees", json={"name": "Ada", "email": "ada@example.com"})
        assert r.status_code == 201, r.text
        employee = r.json()["id"]
        r = await s.call("PATCH", f"/v1/employees/{employee}", json={"status": "offboarded"})
        assert r.status_code == 200, r.text
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await stop(s)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = out.decode().splitlines()
    assert lines[0] == "account added: ada@example.com (imap) in acme", lines
    assert lines[1].startswith(f"employee offboarded: {employee} in acme"), lines
