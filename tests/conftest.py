"""Shared fixtures; the real-server ones live in tests/support."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from types import FrameType

from hypothesis import settings

from libs.common.host import task_chain

# The test tenant "acme" administers the key ring (as "demo" does by default); services
# started as processes (`mailroom up`, `python -m services.x`) inherit this.
os.environ.setdefault("MAILROOM_REGISTRY_KEY_ADMIN_TENANTS", '["demo", "acme"]')

pytest_plugins = [
    "tests.support.tlsca",
    "tests.support.infra",
    "tests.support.stack",
    "tests.support.embedded",
    "tests.support.dovecot",
    "tests.support.smtpd",
]


def _dump_tasks(signum: int, frame: FrameType | None) -> None:
    """``kill -USR1 <pytest pid>``: every pending asyncio task and the chain of coroutines it
    awaits, on stderr (a hung teardown shows what it waits for; py-spy sees only the loop)."""
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    text = "\n".join(task_chain(t) for t in tasks)
    print(f"\n=== {len(tasks)} pending asyncio task(s)\n{text}", file=sys.stderr, flush=True)


signal.signal(signal.SIGUSR1, _dump_tasks)

# Property tests explore new inputs on every local run; CI (CI=true) replays a fixed sequence
# so a landing never hangs on luck. A local find gets fixed in the code or in the generator.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
