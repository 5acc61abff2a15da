"""Sync workers as separate processes (``python -m services.sync``), as pods run them: one
nats-server, one sync database (PostgreSQL), credentials leased from a registry over NATS.

``kill()`` is SIGKILL (no lease given back, connections dropped by the kernel); ``stop()`` is
SIGTERM (a clean shutdown that releases the leases).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors

from libs.common.events import Envelope
from libs.common.subjects import STREAM
from tests.support.dovecot import Dovecot
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


class SyncWorker:
    def __init__(self, name: str, tmp: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port("127.0.0.1")
        self.log_path = tmp / f"{name}.log"
        self.env = {
            **os.environ,
            **env,
            "MAILROOM_SYNC_WORKER_ID": name,
            "MAILROOM_HTTP_PORT": str(self.port),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SyncWorker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.sync"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def logs(self) -> str:
        if not self.log_path.exists():
            return "(not started)"
        return self.log_path.read_text(errors="replace")[-6000:]


async def owners(js: Any, bucket: str = "mailroom_sync") -> dict[str, str]:
    """Account id -> the worker holding its lease, as the KV bucket says."""
    try:
        kv = await js.key_value(f"{bucket}_accounts")
    except nats.js.errors.BucketNotFoundError:
        return {}
    out: dict[str, str] = {}
    watch = await kv.watch(">")
    async for entry in watch:
        if entry is None:
            break
        if entry.operation is None and entry.value:
            out[entry.key.partition(".")[2]] = entry.value.decode()
        if entry.delta == 0:
            break
    await watch.stop()
    return out


async def stored_events(js: Any, subject: str) -> list[Envelope]:
    """The events the stream holds on ``subject`` (each once: JetStream drops duplicates)."""
    sub = await js.subscribe(subject, stream=STREAM, ordered_consumer=True)
    out: list[Envelope] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                return out  # nothing stored on the subject
            out.append(Envelope.from_nats(msg.headers, msg.data))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


def imap_sessions(dovecot: Dovecot) -> collections.Counter[str]:
    """Open IMAP connections per user, as Dovecot counts them (``doveadm who``)."""
    out = dovecot.doveadm("who", "-1")
    users = [line.split()[0] for line in out.splitlines()[1:] if " imap " in f" {line} "]
    return collections.Counter(users)


def logins(dovecot: Dovecot) -> collections.Counter[str]:
    """Successful IMAP logins per user in Dovecot's log."""
    text = dovecot.log_path.read_text(errors="replace")
    return collections.Counter(re.findall(r"imap-login: Info: Login: user=<([^>]+)>", text))
