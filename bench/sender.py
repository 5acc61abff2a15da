"""Sender benchmark: messages/s through the whole service next to raw aiosmtplib, same run.

Processes, as deployed: nats-server; the aiosmtpd of ``tests/support/smtpd.py`` (a child, like
any real SMTP server: in-process its threads would fight both sides for the GIL); the sender
service (a child: uvicorn + the sender app, credentials and admin-only permissions wired in,
SQLite); and this process, the load generator. All submit over STARTTLS (or implicit TLS,
``--security ssl``) with AUTH, ``--concurrency`` at once:

(a) raw: aiosmtplib connect + STARTTLS + AUTH + MAIL/RCPT/DATA + QUIT of a prepared message,
    one connection per message (the baseline of the issue's target, Mailroom >= 50% of it);
(b) Mailroom: ``POST /v1/mailboxes/{id}/messages`` (keep-alive HTTP/1.1) → JWT, permission,
    mailbox, MIME build, intent row (+ limit) → SMTP (a pooled authenticated session of the
    mailbox, ``--no-pool``: a new connection per message) → outcome row + MessageSent event +
    outbox → relay → JetStream; answered 201 after the server's 250;
(c) for reference, raw aiosmtplib with one authenticated session per worker (what the pool can
    at best approach).

The three run interleaved in ``--rounds`` rounds (a, b, c, a, b, c, ...), so a shared machine's
changing load hits all alike; the ratio's spread over the rounds is reported.

    python bench/sender.py [--messages 1000] [--concurrency 16] [--security starttls]
                           [--rounds 5] [--no-pool] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sender_parts import Child, http_post, loop_name, register, serve_sender, serve_smtpd

from libs.common.ids import new_id
from libs.common.natsserver import NatsServer, free_port
from tests.support.smtpd import DEFAULT_PASSWORD, DEFAULT_USER
from tests.support.tlsca import client_context

BODY = "Hello,\n\nthe quarterly numbers are attached in the next message.\n\n-- \nSales\n" * 4


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def _pool(
    n: int, concurrency: int, one: Any, setup: Any = None, teardown: Any = None
) -> tuple[float, list[float]]:
    """Run ``one(state, i)`` n times over ``concurrency`` workers: (seconds, latencies ms)."""
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
                await teardown(state)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


# --- children -----------------------------------------------------------------------------
# --- the two sides ------------------------------------------------------------------------
async def raw(
    smtpd: Child, args: argparse.Namespace, n: int, reuse: bool = False
) -> tuple[float, list[float]]:
    ctx = client_context(smtpd.info["ca_path"])
    port = smtpd.info["tls_port" if args.security == "ssl" else "starttls_port"]
    message = (
        "From: Sales <sales@corp.example>\r\nTo: alice@example.com\r\nSubject: Numbers\r\n"
        f"Message-ID: <{new_id()}@corp.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + BODY.replace("\n", "\r\n")
    ).encode()

    async def session() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, use_tls=args.security == "ssl",
            start_tls=args.security == "starttls", tls_context=ctx,
            local_hostname="bench.mailroom.test",
        )  # fmt: skip
        await client.connect()
        await client.login(DEFAULT_USER, DEFAULT_PASSWORD)
        return client

    async def send(client: aiosmtplib.SMTP, _: int = 0) -> None:
        await client.sendmail("sales@corp.example", ["alice@example.com"], message)

    async def one(_: Any, __: int) -> None:
        client = await session()
        await send(client)
        await client.quit()

    async def quit_(client: aiosmtplib.SMTP) -> None:
        await client.quit()

    if reuse:
        return await _pool(n, args.concurrency, send, session, quit_)
    return await _pool(n, args.concurrency, one)


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

    async def teardown(state: Any) -> None:
        state[1].close()

    return await _pool(n, args.concurrency, one, setup, teardown)


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
               "MAILROOM_SENDER_EHLO_NAME": "bench.mailroom.test",
               "MAILROOM_SENDER_SMTP_POOL_PER_MAILBOX": "0" if args.no_pool else "8"}  # fmt: skip
        sender: Child | None = None
        n = max(1, args.messages // args.rounds)
        took: dict[str, list[float]] = {"raw": [], "svc": [], "reuse": []}
        lat: dict[str, list[float]] = {"raw": [], "svc": [], "reuse": []}
        try:
            sender = await Child("--serve-sender", mailbox, env=env).start()
            token = await register(nats.url, root, smtpd, args.security, mailbox, port)
            sides: dict[str, Callable[[int], Awaitable[tuple[float, list[float]]]]] = {
                "raw": lambda k: raw(smtpd, args, k),
                "svc": lambda k: service(args, port, token, mailbox, k),
                "reuse": lambda k: raw(smtpd, args, k, reuse=True),
            }
            for side in sides.values():  # warm-up
                await side(max(20, n // 5))
            await smtpd.ask("clear")
            raw_cpu, before = 0.0, await sender.ask("cpu")
            for _ in range(args.rounds):
                for name, side in sides.items():
                    cpu = time.process_time()
                    seconds, latencies = await side(n)
                    if name == "raw":
                        raw_cpu += time.process_time() - cpu
                    took[name].append(seconds)
                    lat[name] += latencies
            after = await sender.ask("cpu")
            delivered = await smtpd.ask("count")
        finally:
            if sender is not None:
                await sender.stop()
            await smtpd.stop()
            nats.stop()
    total = n * args.rounds
    rate = {k: total / sum(v) for k, v in took.items()}
    ratios = sorted(r / s for r, s in zip(took["raw"], took["svc"], strict=True))
    diff = {k: after[k] - before[k] for k in after}
    return {
        "security": args.security,
        "messages": total,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "pool": not args.no_pool,
        "raw_messages_per_s": round(rate["raw"], 1),
        "mailroom_messages_per_s": round(rate["svc"], 1),
        "raw_reuse_messages_per_s": round(rate["reuse"], 1),
        "ratio": round(rate["svc"] / rate["raw"], 3),
        "ratio_rounds_min": round(ratios[0], 3),
        "ratio_rounds_median": round(ratios[len(ratios) // 2], 3),
        "ratio_rounds_max": round(ratios[-1], 3),
        "ratio_vs_raw_reuse": round(rate["svc"] / rate["reuse"], 3),
        **{f"{k}_p{q}_ms": round(pct(lat[k], q / 100), 2) for k in lat for q in (50, 99)},
        "delivered": delivered,
        "expected": total * 3,
        "raw_client_cpu_ms_per_msg": round(1000 * raw_cpu / total, 2),
        "sender_cpu_ms_per_msg": round(diff["cpu_ms"] / total, 2),
        "smtp_connections_per_send": round(diff["opened"] / total, 3),
        "sends_per_group_commit": round(diff["outcomes"] / max(1, diff["commits"]), 1),
        "cpus": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
        "loop": loop_name(),
    }


def table(r: dict[str, Any]) -> str:
    def lat(k: str) -> str:
        return f"p50 {r[f'{k}_p50_ms']:.1f} ms  p99 {r[f'{k}_p99_ms']:.1f} ms"

    svc = "pooled SMTP" if r["pool"] else "SMTP per message"
    rows = [
        ("raw aiosmtplib (connect+TLS+AUTH+send)", f"{r['raw_messages_per_s']:,.0f} msg/s",
         lat("raw")),
        (f"Mailroom HTTP -> sender -> {svc} (+event)",
         f"{r['mailroom_messages_per_s']:,.0f} msg/s", lat("svc")),
        ("ratio Mailroom / raw (target >= 0.5)", f"{r['ratio']:.3f}",
         f"rounds {r['ratio_rounds_min']:.3f} .. {r['ratio_rounds_median']:.3f} .. "
         f"{r['ratio_rounds_max']:.3f}"),
        ("ref: raw aiosmtplib, a session per worker", f"{r['raw_reuse_messages_per_s']:,.0f} msg/s",
         f"{lat('reuse')}  (Mailroom / this {r['ratio_vs_raw_reuse']:.3f})"),
        ("CPU per message: raw client / sender", "",
         f"{r['raw_client_cpu_ms_per_msg']:.1f} ms / {r['sender_cpu_ms_per_msg']:.1f} ms"),
        ("sender: SMTP connections per send", f"{r['smtp_connections_per_send']:.3f}",
         f"{r['sends_per_group_commit']} outcomes per commit; delivered {r['delivered']}"
         f"/{r['expected']}"),
    ]  # fmt: skip
    width = max(len(k) for k, _, _ in rows)
    head = (f"{r['messages']} messages x 3 paths in {r['rounds']} interleaved rounds, "
            f"{r['security']}, concurrency {r['concurrency']} "
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pool", action="store_true", help="a new SMTP connection per send")
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
