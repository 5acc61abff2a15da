"""JSON logs: trace and span ids, tenant and actor; secrets and tokens never reach them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.common import telemetry
from libs.common.leases import lease_credential
from libs.common.logs import JsonFormatter, RedactionFilter
from libs.common.nats import connect
from libs.common.natsserver import NatsServer, free_port
from libs.common.service import Caller
from tests.support.registry import imap_account, stop
from tests.support.stack import start_stack, wait_until

pytestmark = [pytest.mark.connected, pytest.mark.e2e]


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every log record of the test, through the production filter and formatter."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_log_lines_carry_trace_tenant_and_actor(
    tmp_path: Path, nats_server: NatsServer, json_logs: io.StringIO
) -> None:
    telemetry.setup_tracing(exporter=InMemorySpanExporter())
    s = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    app: Any = s.client._transport.app  # type: ignore[attr-defined]

    @app.get("/test/log")
    async def log_something(caller: Caller) -> dict[str, str]:
        logging.getLogger("mailroom.test").info("handled for %s", caller.subject)
        return {}

    app.router.routes.insert(0, app.router.routes.pop())  # before any catch-all
    consumer = s.host.service("audit").consumers[0]
    seen: list[bool] = []

    def on_applied(events: Any) -> None:
        logging.getLogger("mailroom.test.consumer").info("applied %d", len(events))
        seen.append(True)

    consumer.on_applied.append(on_applied)
    try:
        assert (await s.call("GET", "/test/log", subject="ada", role="employee")).status_code == 200
        assert (await s.call("POST", "/v1/accounts", json=imap_account())).status_code == 201
        await wait_until(lambda: _true(seen))
    finally:
        await stop(s)
        telemetry.disable()
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    mine = [doc for doc in lines if doc["logger"] == "mailroom.test"]
    assert len(mine) == 1, lines
    assert mine[0]["tenant_id"] == "acme" and mine[0]["actor"] == "employee:ada"
    assert len(mine[0]["trace_id"]) == 32 and len(mine[0]["span_id"]) == 16
    applied = [doc for doc in lines if doc["logger"] == "mailroom.test.consumer"]
    assert applied and applied[0]["tenant_id"] == "acme" and applied[0]["actor"] == "admin:admin"
    assert len(applied[0]["trace_id"]) == 32  # the consumer span of the event


async def _true(values: list[bool]) -> bool:
    return bool(values)


class Up:
    """``mailroom up`` at DEBUG level, its whole log output kept."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log = data_dir / "up.log"
        self.proc: subprocess.Popen[str] | None = None
        self.token = ""

    def start(self) -> None:
        env = {
            **os.environ,
            "MAILROOM_DATA_DIR": str(self.data_dir),
            "MAILROOM_HTTP_PORT": str(self.port),
            "MAILROOM_LOG_LEVEL": "DEBUG",
        }
        for var in ("MAILROOM_NATS_URL", "MAILROOM_DATABASE_URL", "MAILROOM_OTEL_ENABLED"):
            env.pop(var, None)
        mailroom = Path(sys.executable).with_name("mailroom")
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen(
                [str(mailroom), "up"], env=env, stdout=subprocess.PIPE, stderr=err, text=True
            )
        assert self.proc.stdout is not None
        self.token = self.proc.stdout.readline().strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.2)
        pytest.fail("mailroom up did not become ready")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
            self.proc = None


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    (tmp_path / "data").mkdir()
    u = Up(tmp_path / "data")
    yield u
    if u.proc is not None:
        u.proc.kill()
        u.proc.wait()


async def test_canary_password_and_bearer_token_never_reach_the_logs(up: Up) -> None:
    password = f"CANARY-PW-{uuid.uuid4()}"
    rotated = f"CANARY-PW2-{uuid.uuid4()}"
    bogus_token = f"CANARYTOKEN{uuid.uuid4().hex}"
    up.start()
    base = f"http://127.0.0.1:{up.port}"
    auth = {"Authorization": f"Bearer {up.token}"}
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as c:
        r = await c.post("/v1/accounts", json=imap_account(password=password))
        assert r.status_code == 201, r.text
        account = r.json()["id"]
        r = await c.put(f"/v1/accounts/{account}/credential", json={"password": rotated})
        assert r.status_code == 200, r.text
        bad = await c.get("/v1/accounts", headers={"Authorization": f"Bearer {bogus_token}"})
        assert bad.status_code == 401
        r = await c.get("/v1/accounts", params={"token": bogus_token, "password": password})
        assert r.status_code == 200
        assert (await c.post("/v1/accounts", json=imap_account(password=password))).is_error
        nc = await connect((up.data_dir / "nats.url").read_text(), name="canary")
        try:
            lease = await lease_credential(nc, "demo", account, "sync", "canary")
            assert lease.secret.get_secret_value() == rotated
        finally:
            await nc.close()
        assert (await c.get("/metrics")).status_code == 200
        await asyncio.sleep(0.5)
    up.stop()
    text = up.log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines, text[-2000:]
    assert any(doc["logger"] == "mailroom.consumer" for doc in lines)  # DEBUG was on
    for secret in (password, rotated, bogus_token, up.token):
        assert secret not in text


def test_the_filter_scrubs_planted_secrets_wherever_they_hide(json_logs: io.StringIO) -> None:
    from libs.common.logs import remember_secret

    password = f"CANARY-PW-{uuid.uuid4()}"
    leased = f"leased-{uuid.uuid4()}"
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLWNhbmFyeQ"
    remember_secret(leased)
    log = logging.getLogger("mailroom.test.redaction")
    log.warning("upstream said: Authorization: Bearer %s", jwt)
    log.warning("token %s in an argument", jwt)
    log.warning("login failed: password=%s user=ada", password)
    log.warning('body {"password": "%s"}', password)
    log.warning("server answered %r", leased)
    basic = base64.b64encode(f"ada@corp.example:{leased}".encode()).decode()
    log.warning("sent headers {'Authorization': 'Basic %s'}", basic)
    try:
        raise RuntimeError(f"IMAP LOGIN ada {leased} refused")
    except RuntimeError:
        log.exception("sync failed")
    out = json_logs.getvalue()
    assert out.count("\n") == 7
    for secret in (password, leased, jwt, jwt.split(".")[2], basic):
        assert secret not in out
    assert "[REDACTED" in out
