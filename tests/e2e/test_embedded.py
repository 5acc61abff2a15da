"""The embedded stack as a user runs it: `mailroom up` in a subprocess, used over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.embedded import Up

pytestmark = [pytest.mark.e2e, pytest.mark.connected]


def _wait_for_audit(c: httpx.Client, n: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        items: list[dict[str, object]] = c.get("/v1/audit/events").json()["items"]
        if len(items) >= n:
            return items
        time.sleep(0.1)
    pytest.fail(f"audit did not reach {n} entries")


def test_up_serves_the_api_and_keeps_data_across_restarts(up: Up) -> None:
    up.start()
    assert up.token.count(".") == 2  # the demo admin token is printed alone on its line
    with up.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/docs").status_code == 200
        paths = c.get("/openapi.json").json()["paths"]
        assert "/v1/audit/verify" in paths and "/v1/employees" in paths
        r = c.post("/v1/employees", json={"name": "Ada Lovelace", "email": "ada@demo.example"})
        assert r.status_code == 201, r.text
        employee_id = r.json()["id"]
        items = _wait_for_audit(c, 1)
        assert items[0]["event"]["type"] == "mailroom.registry.EmployeeAdded.v1"
        assert c.get("/v1/audit/verify").json()["ok"] is True
    assert up.stop() == 0
    nats_url = (up.data_dir / "nats.url").read_text()
    host, port = nats_url.removeprefix("nats://").split(":")
    with pytest.raises(OSError):  # the embedded nats-server stopped with it
        socket.create_connection((host, int(port)), timeout=1).close()

    up.start()
    with up.client() as c:
        assert c.get(f"/v1/employees/{employee_id}").json()["name"] == "Ada Lovelace"
        r = c.post("/v1/employees", json={"name": "Grace Hopper", "email": "grace@demo.example"})
        assert r.status_code == 201
        items = _wait_for_audit(c, 2)
        assert len(items) == 2  # nothing replayed twice after the restart
        verify = c.get("/v1/audit/verify").json()
        assert verify["ok"] is True and verify["checked"] == 2
    _cli_against(up)
    assert up.stop() == 0


def _mailroom(up: Up, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MAILROOM_DATA_DIR": str(up.data_dir),
        "MAILROOM_API": up.base,
        "MAILROOM_HTTP_PORT": str(up.port),
    }
    env.pop("MAILROOM_NATS_URL", None)
    mailroom = Path(sys.executable).with_name("mailroom")
    return subprocess.run(
        [str(mailroom), *args], env=env, capture_output=True, text=True, timeout=60
    )


def _cli_against(up: Up) -> None:
    """The CLI's commands against the running stack."""
    out = _mailroom(up, "tokens", "create", "--employee", "e-42", "--tenant", "demo")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    r = httpx.get(f"{up.base}/v1/audit/verify", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403  # a valid employee token, but not an admin
    bad = _mailroom(up, "tokens", "create", "--admin", "--employee", "x")
    assert bad.returncode == 2
    out = _mailroom(up, "audit", "verify")
    assert out.returncode == 0 and "intact" in out.stderr and "2 entries" in out.stderr
    out = _mailroom(up, "events", "tail", "--from-start", "--count", "2", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [e["data"]["name"] for e in lines] == ["Ada Lovelace", "Grace Hopper"]
    with up.client() as c:  # a third event, of another type, after the two
        grace = next(e for e in c.get("/v1/employees").json()["items"] if e["name"][0] == "G")
        assert c.post(f"/v1/employees/{grace['id']}/offboard", json={}).status_code == 200
    only = ("--from-start", "--count", "1", "--json", "--tenant", "demo", "--event")
    out = _mailroom(up, "events", "tail", *only, "EmployeeOffboarded")
    assert out.returncode == 0, out.stderr
    [offboarded] = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert offboarded["aggregate_id"] == grace["id"]
    assert offboarded["type"] == "mailroom.registry.EmployeeOffboarded.v1"
    for bad in (("--tenant", "de.mo"), ("--event", "Employee Added"), ("--tenant", "demo",
                "--subject", "mailroom.demo.>")):  # fmt: skip
        out = _mailroom(up, "events", "tail", "--count", "1", *bad)
        assert out.returncode == 2, (bad, out.stdout, out.stderr)
