"""The embedded stack as a user runs it: `mailroom up` in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from libs.common.natsserver import free_port


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.token = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "MAILROOM_DATA_DIR": str(self.data_dir),
            "MAILROOM_HTTP_PORT": str(self.port),
        }
        env.pop("MAILROOM_NATS_URL", None)
        env.pop("MAILROOM_DATABASE_URL", None)
        mailroom = Path(sys.executable).with_name("mailroom")
        self.proc = subprocess.Popen(
            [str(mailroom), "up"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(self.data_dir / "up.log", "a"),
            text=True,
        )
        assert self.proc.stdout is not None
        self.token = self.proc.stdout.readline().strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (self.data_dir / "up.log").read_text()[-3000:]
            time.sleep(0.2)
        pytest.fail("mailroom up did not become ready")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    (tmp_path / "data").mkdir()
    u = Up(tmp_path / "data")
    yield u
    if u.proc is not None:
        u.proc.kill()
        u.proc.wait()
