"""Sender benchmark: messages/s through the whole service next to raw aiosmtplib, same run.

Processes, as deployed: nats-server; the aiosmtpd of ``tests/support/smtpd.py`` (a child, like
any real SMTP server: in-process its threads would fight both sides for the GIL); the sender
service (a child: uvicorn + the sender app, credentials and admin-only permissions wired in,
SQLite); and this process, the load generator. Both sides submit over STARTTLS (or implicit
TLS, ``--security ssl``) with AUTH, one connection per message, ``--concurrency`` at once:

(a) raw: aiosmtplib connect + STARTTLS + AUTH + MAIL/RCPT/DATA + QUIT of a prepared message;
(b) Mailroom: ``POST /v1/mailboxes/{id}/messages`` (keep-alive HTTP/1.1) → JWT, permission,
    mailbox, MIME build, intent row (+ limit) → the same SMTP conversation → outcome row +
    MessageSent event + outbox → relay → JetStream; answered 201 after the server's 250.

    python bench/sender.py [--messages 1000] [--concurrency 16] [--security starttls] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.auth import TokenIssuer, load_or_create_key
from libs.common.events import AccountAdded, AccountSettings, CommandContext, Envelope, Server
from libs.common.ids import new_id
from libs.common.nats import connect, ensure_streams
from libs.common.natsserver import NatsServer, free_port
from tests.support.smtpd import DEFAULT_PASSWORD, DEFAULT_USER
from tests.support.tlsca import client_context

BODY = "Hello,\n\nthe quarterly numbers are attached in the next message.\n\n-- \nSales\n" * 4
HERE = Path(__file__).resolve()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def _pool(n: int, concurrency: int, one: Any, setup: Any = None) -> tuple[float, list[float]]:
    """Run ``one(state, i)`` n times over ``concurrency`` workers: (messages/s, latencies ms)."""
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        state = await setup() if setup else None
        try:
            for i in counter:
                t0 = time.perf_counter()
                await one(state, i)
                latencies.append((time.perf_counter() - t0) * 1000)
        finally:
            if state is not None:
                state[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start), latencies


# --- children -----------------------------------------------------------------------------
class Child:
    """A child process that prints one JSON line when ready and then answers stdin lines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args, self.env = args, env
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    async def start(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), *self.args, env=self.env,
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
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        server.should_exit = True
        await task
        if profile:
            prof.disable()
            prof.dump_stats(profile)
        cpu, h = os.times(), svc.handlers
        assert h is not None
        per_commit = round(h.outcomes.items / max(1, h.outcomes.transactions), 1)
        stats = {"cpu_ms": int(1000 * (cpu.user + cpu.system)), "sends_per_commit": per_commit}
        print(json.dumps(stats), flush=True)

    # The event loop and HTTP parser uvicorn.run would pick (what `python -m services.sender`
    # runs on: uvloop and httptools when installed).
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(main())


# --- the two sides ------------------------------------------------------------------------
async def raw(smtpd: Child, args: argparse.Namespace, n: int) -> tuple[float, list[float]]:
    ctx = client_context(smtpd.info["ca_path"])
    port = smtpd.info["tls_port" if args.security == "ssl" else "starttls_port"]
    message = (
        "From: Sales <sales@corp.example>\r\nTo: alice@example.com\r\nSubject: Numbers\r\n"
        f"Message-ID: <{new_id()}@corp.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + BODY.replace("\n", "\r\n")
    ).encode()

    async def one(_: Any, __: int) -> None:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, use_tls=args.security == "ssl",
            start_tls=args.security == "starttls", tls_context=ctx,
            local_hostname="bench.mailroom.test",
        )  # fmt: skip
        await client.connect()
        await client.login(DEFAULT_USER, DEFAULT_PASSWORD)
        await client.sendmail("sales@corp.example", ["alice@example.com"], message)
        await client.quit()

    return await _pool(n, args.concurrency, one)


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


async def service(
    args: argparse.Namespace, port: int, token: str, mailbox: str, n: int
) -> tuple[float, list[float]]:
    body = json.dumps({"to": ["alice@example.com"], "subject": "Numbers", "text": BODY}).encode()
    path = f"/v1/mailboxes/{mailbox}/messages"

    async def setup() -> Any:
        return await asyncio.open_connection("127.0.0.1", port)

    async def one(state: Any, _: int) -> None:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": new_id()}
        status = await http_post(state, path, headers, body)
        if status != 201:
            raise RuntimeError(f"send answered {status}")

    return await _pool(n, args.concurrency, one, setup)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats")
        nats.start()
        smtpd = await Child("--serve-smtpd", str(root)).start()
        mailbox, port = new_id(), free_port()
        env = {**os.environ, "MAILROOM_NATS_URL": nats.url, "MAILROOM_DATA_DIR": str(root / "data"),
               "MAILROOM_HTTP_PORT": str(port), "MAILROOM_LOG_LEVEL": "WARNING",
               "MAILROOM_SENDER_CA_FILE": smtpd.info["ca_path"],
               "MAILROOM_SENDER_EHLO_NAME": "bench.mailroom.test"}  # fmt: skip
        sender: Child | None = None
        try:
            warm = max(20, args.messages // 10)
            await raw(smtpd, args, warm)
            cpu = time.process_time()
            raw_rate, raw_lat = await raw(smtpd, args, args.messages)
            raw_cpu = 1000 * (time.process_time() - cpu) / args.messages
            sender = await Child("--serve-sender", mailbox, env=env).start()
            token = await _register(nats.url, root, smtpd, args, mailbox, port)
            await service(args, port, token, mailbox, warm)
            await smtpd.ask("clear")
            svc_rate, svc_lat = await service(args, port, token, mailbox, args.messages)
            delivered = await smtpd.ask("count")
            stats = await asyncio.wait_for(sender.ask("quit"), 30)
        finally:
            if sender is not None:
                await sender.stop()
            await smtpd.stop()
            nats.stop()
    return {
        "security": args.security,
        "messages": args.messages,
        "concurrency": args.concurrency,
        "raw_messages_per_s": round(raw_rate, 1),
        "mailroom_messages_per_s": round(svc_rate, 1),
        "ratio": round(svc_rate / raw_rate, 3),
        "raw_p50_ms": round(pct(raw_lat, 0.5), 2),
        "raw_p99_ms": round(pct(raw_lat, 0.99), 2),
        "mailroom_p50_ms": round(pct(svc_lat, 0.5), 2),
        "mailroom_p99_ms": round(pct(svc_lat, 0.99), 2),
        "delivered": delivered,
        "raw_client_cpu_ms_per_msg": round(raw_cpu, 2),
        "sender_cpu_ms_per_msg": round(stats["cpu_ms"] / (warm + args.messages), 2),
        "sends_per_group_commit": stats["sends_per_commit"],
        "cpus": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
        "loop": _loop_name(),
    }


async def _register(
    nats_url: str, root: Path, smtpd: Child, args: argparse.Namespace, mailbox: str, port: int
) -> str:
    """Publish the mailbox as the registry would; wait until the sender knows it."""
    nc = await connect(nats_url, name="bench")
    js = nc.jetstream()
    await ensure_streams(js)
    smtp_port = smtpd.info["tls_port" if args.security == "ssl" else "starttls_port"]
    outgoing = Server(protocol="smtp", host="127.0.0.1", port=smtp_port, security=args.security)
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


def _loop_name() -> str:
    """What the service child runs on (uvicorn's choice with loop="auto", http="auto")."""
    import importlib.util

    have = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m)]
    return "+".join(have) if have else "asyncio+h11"


def table(r: dict[str, Any]) -> str:
    rows = [
        ("raw aiosmtplib (connect+TLS+AUTH+send)", f"{r['raw_messages_per_s']:,.0f} msg/s",
         f"p50 {r['raw_p50_ms']:.1f} ms  p99 {r['raw_p99_ms']:.1f} ms"),
        ("Mailroom HTTP -> sender -> SMTP (+event)", f"{r['mailroom_messages_per_s']:,.0f} msg/s",
         f"p50 {r['mailroom_p50_ms']:.1f} ms  p99 {r['mailroom_p99_ms']:.1f} ms"),
        ("ratio Mailroom / raw", f"{r['ratio']:.3f}", f"delivered {r['delivered']}"),
        ("CPU per message: raw client / sender", "",
         f"{r['raw_client_cpu_ms_per_msg']:.1f} ms / {r['sender_cpu_ms_per_msg']:.1f} ms"),
    ]  # fmt: skip
    width = max(len(k) for k, _, _ in rows)
    head = (f"{r['messages']} messages, {r['security']}, concurrency {r['concurrency']} "
            f"(service on {r['loop']}; {r['cpus']} CPUs, load {r['load_1m']})")  # fmt: skip
    lines = [head, f"{'path':<{width}}  {'throughput':>12}  latency", "-" * (width + 50)]
    lines += [f"{k:<{width}}  {v:>12}  {x}" for k, v, x in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--security", choices=["starttls", "ssl"], default="starttls")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-smtpd", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-sender", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.serve_smtpd:
        serve_smtpd(ns.serve_smtpd)
    elif ns.serve_sender:
        serve_sender(ns.serve_sender)
    else:
        result = asyncio.run(main(ns))
        print(table(result))
        if ns.json:
            print(json.dumps(result))
