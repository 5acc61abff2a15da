"""The processes and plumbing of ``bench/sender.py``: a child process speaking JSON lines, the
aiosmtpd child, the sender-service child, a minimal keep-alive HTTP/1.1 POST, and the mailbox
registration the registry would publish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from libs.common.auth import TokenIssuer, load_or_create_key
from libs.common.events import AccountAdded, AccountSettings, CommandContext, Envelope, Server
from libs.common.nats import connect, ensure_streams
from tests.support.smtpd import DEFAULT_PASSWORD, DEFAULT_USER

SCRIPT = Path(__file__).resolve().parent / "sender.py"


class Child:
    """A child process that prints one JSON line when ready and then answers stdin lines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args, self.env = args, env
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    async def start(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), *self.args, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.info = json.loads(await self._line())
        return self

    async def _line(self) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.args[0]} exited")
        return line

    async def ask(self, command: str) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return json.loads(await self._line())

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ask("quit"), 10)
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            await self.proc.wait()


def serve_smtpd(root: Path) -> None:
    """Child: the test aiosmtpd; prints its ports; answers count/clear/quit."""
    import logging

    from tests.support.smtpd import SmtpServer
    from tests.support.tlsca import make_pki

    logging.disable(logging.WARNING)  # aiosmtpd's per-AUTH deprecation warning
    smtpd = SmtpServer(pki=make_pki(root / "pki")).start()
    info = {"starttls_port": smtpd.starttls_port, "tls_port": smtpd.tls_port,
            "ca_path": str(smtpd.ca_path)}  # fmt: skip
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() == "clear":
            smtpd.messages.clear()
        print(len(smtpd.messages), flush=True)
        if line.strip() == "quit":
            break
    smtpd.stop()


def serve_sender(mailbox_id: str) -> None:
    """Child: the sender service as ``python -m services.sender`` runs it, with the benchmark's
    mailbox credential and admin-only permissions wired in."""
    import uvicorn
    from pydantic import SecretStr

    from libs.common.host import Host
    from libs.common.settings import Settings
    from services.sender.app import create_app
    from services.sender.credentials import StaticCredentials
    from services.sender.permissions import AdminOnly
    from services.sender.smtp import Credential

    settings = Settings()
    creds = StaticCredentials({mailbox_id: Credential(DEFAULT_USER, SecretStr(DEFAULT_PASSWORD))})
    svc = create_app(settings, permissions=AdminOnly(), credentials=creds)
    assert settings.nats_url is not None
    host = Host([svc], settings, settings.nats_url)
    config = uvicorn.Config(host.app(), host="127.0.0.1", port=settings.http_port,
                            log_level="warning", access_log=False)  # fmt: skip
    server = uvicorn.Server(config)

    async def main() -> None:
        profile = os.environ.get("BENCH_PROFILE")
        if profile:  # developer aid: profile the service process
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        print(json.dumps({"port": settings.http_port}), flush=True)
        h = svc.handlers
        assert h is not None
        # Answers each line with its CPU so far and counters; "quit" stops.
        while line := await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline):
            cpu, pool = os.times(), h.smtp_pool.stats
            stats = {"cpu_ms": 1000 * (cpu.user + cpu.system), "opened": pool.opened,
                     "reused": pool.reused, "commits": h.outcomes.transactions,
                     "outcomes": h.outcomes.items}  # fmt: skip
            if line.strip() == "quit":
                break
            print(json.dumps(stats), flush=True)
        server.should_exit = True
        await task
        if profile:
            prof.disable()
            prof.dump_stats(profile)
        print(json.dumps(stats), flush=True)

    # The event loop and HTTP parser uvicorn.run would pick (what `python -m services.sender`
    # runs on: uvloop and httptools when installed).
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())


async def http_post(state: Any, path: str, headers: dict[str, str], body: bytes) -> int:
    """One HTTP/1.1 request on a kept-alive connection; the status (body read and dropped)."""
    reader, writer = state
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: bench\r\n{head}Content-Length: {len(body)}\r\n"
        f"Content-Type: application/json\r\n\r\n".encode()
        + body
    )
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def register(
    nats_url: str, root: Path, smtpd: Child, security: str, mailbox: str, port: int
) -> str:
    """Publish the mailbox as the registry would; wait until the sender knows it."""
    nc = await connect(nats_url, name="bench")
    js = nc.jetstream()
    await ensure_streams(js)
    smtp_port = smtpd.info["tls_port" if security == "ssl" else "starttls_port"]
    outgoing = Server(protocol="smtp", host="127.0.0.1", port=smtp_port, security=security)
    settings = AccountSettings(display_name="Sales", outgoing=outgoing, username=DEFAULT_USER)
    added = AccountAdded(address="sales@corp.example", protocol="custom", settings=settings)
    ctx = CommandContext("bench", "admin:bench")
    env = Envelope.wrap(added, ctx, aggregate_id=mailbox, aggregate_version=1)
    await js.publish(env.nats_subject, env.body(), headers=env.to_headers())
    await nc.close()
    token = TokenIssuer(load_or_create_key(root / "data" / "auth_ed25519.pem")).issue(
        "bench", "admin", "admin"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(500):
            writer.write(
                f"GET /v1/mailboxes/{mailbox}/sending HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                length = int(value) if name.lower() == "content-length" else length
            await reader.readexactly(length)
            if status == 200:
                return token
            await asyncio.sleep(0.02)
    finally:
        writer.close()
    raise RuntimeError("the sender never learnt the mailbox")


def loop_name() -> str:
    """What the service child runs on (uvicorn's choice with loop="auto", http="auto")."""
    import importlib.util

    have = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m)]
    return "+".join(have) if have else "asyncio+h11"
