"""A shutdown step that hangs does not hang the process: ``Host.stop`` bounds each step, logs
what every pending task awaits, and stops the rest (real nats-server, audit + authz)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from libs.common import host as host_module
from libs.common.natsserver import NatsServer
from tests.support.stack import start_stack

pytestmark = [pytest.mark.connected]


async def test_a_hanging_stop_step_is_bounded_and_named(
    tmp_path: Path,
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stack = await start_stack(tmp_path, nats_server, ("authz", "audit"))
    monkeypatch.setattr(host_module, "STOP_STEP_S", 0.5)
    forever = asyncio.Event()

    async def wedged_hook(svc: Any, runtime: Any) -> None:
        await forever.wait()  # an on_stop hook that never returns

    audit = stack.host.service("audit")
    audit.on_stop.insert(0, wedged_hook)
    authz_index = stack.host.service("authz").index
    assert authz_index is not None
    await stack.client.aclose()
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="mailroom.host"):
        await asyncio.wait_for(stack.host.stop(), 10)
    assert time.monotonic() - t0 < 5
    text = caplog.text
    assert "stopping the audit service took over" in text
    assert "wedged_hook" in text  # the pending task's stack names what it awaits
    assert authz_index._task is None or authz_index._task.done()  # the others still stopped
