"""Bulk import benchmark: ``POST /v1/accounts/import`` on a registry with its outbox relay
publishing to an embedded nats-server (the whole write path), SQLite in a temp dir.

Runs, each on a fresh registry:
  1. 1,000 rows, no connection tests          (goal < 3 s)
  2. 10,000 rows, no connection tests         (goal < 20 s)
  3. the 10,000-row file again: all unchanged (idempotent re-run)
  4. 1,000 rows with connection tests against a local Dovecot (IMAP, implicit TLS) and a local
     aiosmtpd (SMTP, implicit TLS, in its own process)  (goal < 15 s), bracketed by the raw
     baseline measured in the same run, before and after: the same conversations with bare
     aioimaplib (connect, TLS, LOGIN, EXAMINE INBOX, LOGOUT) and aiosmtplib (connect, TLS,
     AUTH, QUIT) for as many other new mailboxes, at the same concurrency. Every mailbox is
     opened for the first time (Dovecot builds its indexes then: most of the servers' CPU),
     so each run gets its own fresh users. On a shared machine the servers' share of the
     CPU sets the pace: compare the import with its raw baseline.

Each row: an IMAP account with its servers, a password (sealed), an owner by email (300
distinct employees, created on first use, with departments) and two forwarding addresses.

    python bench/import.py [--rows 1000] [--big 10000] [--tested 1000] [--concurrency 16] [--json]
        [--postgres postgresql+asyncpg://USER@HOST/DB]

With ``--postgres`` each run's registry gets its own fresh PostgreSQL database (created next to
the URL's, dropped afterwards) instead of SQLite.

``--json`` prints one JSON object as the last line. The Dovecot run is skipped (and says so)
when Dovecot is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from libs.common.natsserver import NatsServer
from services.registry.settings import RegistrySettings
from tests.support.registry import stop
from tests.support.stack import Stack, make_settings

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "address,display_name,protocol,incoming_host,incoming_port,incoming_security,"
    "outgoing_host,outgoing_port,outgoing_security,username,password,owner_email,"
    "employee_name,department,forwarding"
)
GOALS = {"import_1k": 3.0, "import_10k": 20.0, "import_1k_tested": 15.0}


def csv_file(n: int, servers: tuple[str, int, str, int] | None = None, users: Any = None) -> bytes:
    imap_host, imap_port, smtp_host, smtp_port = servers or (
        "imap.acme.example",
        993,
        "smtp.acme.example",
        465,
    )
    lines = [HEADER]
    for i in range(n):
        user, password = users[i] if users else (f"user{i}", f"pw-{i}")
        lines.append(
            f"{user}@acme.example,User {i},imap,{imap_host},{imap_port},ssl,{smtp_host},"
            f"{smtp_port},ssl,{user},{password},owner{i % 300}@acme.example,Owner {i % 300},"
            f"Dept {i % 7},boss@acme.example;audit@acme.example"
        )
    return ("\n".join(lines) + "\n").encode()


POSTGRES: list[str] = []  # --postgres: the base URL
_DROPS: list[Callable[[], Awaitable[None]]] = []


async def start(tmp: Path, nats: NatsServer, **registry: Any) -> Stack:
    import httpx

    from libs.common.host import Host
    from services.registry import app as registry_app

    template = None
    if POSTGRES:
        from pipeline import pg_databases

        template, drop = await pg_databases(POSTGRES[0], ["registry"])
        _DROPS.append(drop)
    settings = make_settings(tmp / "data", template, nats_url=nats.url)
    svc = registry_app.create_app(settings, registry_settings=RegistrySettings(**registry))
    host = Host([svc], settings, nats.url)
    app = host.app()
    await host.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mailroom")
    return Stack(host, client, settings, nats)


async def timed_import(
    stack: Stack, data: bytes, **params: Any
) -> tuple[float, float, dict[str, Any]]:
    cpu, start = time.process_time(), time.perf_counter()
    r = await stack.call(
        "POST",
        "/v1/accounts/import",
        content=data,
        headers={"content-type": "text/csv"},
        params=params,
        timeout=600,
    )
    wall = time.perf_counter() - start
    r.raise_for_status()
    return wall, time.process_time() - cpu, r.json()


SMTPD = textwrap.dedent(
    """
    import json, sys, time, warnings
    warnings.simplefilter("ignore")  # aiosmtpd warns once per session
    sys.path.insert(0, {root!r})
    from tests.support.smtpd import SmtpServer
    from tests.support.tlsca import TestPKI
    pki = TestPKI(None, {ca!r}, {cert!r}, {key!r})
    server = SmtpServer(pki=pki, users=json.load(open({users!r}))).start()
    print(server.tls_port, flush=True)
    while True:
        time.sleep(3600)
    """
)


def _servers(tmp: Path, n: int) -> tuple[Any, subprocess.Popen[str], int, list[tuple[str, str]]]:
    """A Dovecot with ``n`` users, and aiosmtpd (same users) in its own process: its threads
    would otherwise share our interpreter's GIL."""
    from tests.support.dovecot import Dovecot
    from tests.support.tlsca import session_pki

    pki = session_pki()
    dovecot = Dovecot(pki=pki).start()
    users = [dovecot.new_user("bench") for _ in range(n)]
    tmp.mkdir(parents=True, exist_ok=True)
    users_file = tmp / "smtp-users.json"
    users_file.write_text(json.dumps(dict(users)))
    script = SMTPD.format(
        root=str(ROOT),
        users=str(users_file),
        ca=str(pki.ca_path),
        cert=str(pki.cert_path),
        key=str(pki.key_path),
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().strip())
    return dovecot, proc, port, users


async def raw_checks(
    users: list[tuple[str, str]], imaps_port: int, smtp_port: int, concurrency: int
) -> float:
    """The raw baseline: per user, IMAP and SMTP at once with bare clients; seconds."""
    import aioimaplib
    import aiosmtplib

    from tests.support.tlsca import session_pki

    ctx = session_pki().client_context()
    gate = asyncio.Semaphore(concurrency)

    async def imap(user: str, password: str) -> None:
        client = aioimaplib.IMAP4_SSL("127.0.0.1", imaps_port, ssl_context=ctx)
        await client.wait_hello_from_server()
        for r in (await client.login(user, password), await client.examine("INBOX")):
            if r.result != "OK":
                raise RuntimeError(f"raw IMAP check failed: {r}")
        await client.logout()

    async def smtp(user: str, password: str) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port, use_tls=True,
                                 tls_context=ctx)  # fmt: skip
        await client.connect()
        await client.login(user, password)
        await client.quit()

    async def one(user: str, password: str) -> None:
        async with gate:
            await asyncio.gather(imap(user, password), smtp(user, password))

    start = time.perf_counter()
    await asyncio.gather(*(one(u, p) for u, p in users))
    return time.perf_counter() - start


async def tested_run(tmp: Path, nats: NatsServer, n: int, concurrency: int) -> dict[str, Any]:
    from tests.support.dovecot import _find
    from tests.support.tlsca import session_pki

    if _find("dovecot") is None:
        return {"skipped": "dovecot is not installed"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    dovecot, proc, smtp_port, everyone = await asyncio.to_thread(_servers, tmp, 3 * n)
    raw_before, users, raw_after = everyone[:n], everyone[n : 2 * n], everyone[2 * n :]
    try:
        raw_s = [await raw_checks(raw_before, dovecot.imaps_port, smtp_port, concurrency)]
        stack = await start(
            tmp / "tested",
            nats,
            ca_file=session_pki().ca_path,
            allow_private_targets=True,
            connect_timeout_s=10,
        )
        try:
            data = csv_file(n, ("127.0.0.1", dovecot.imaps_port, "127.0.0.1", smtp_port), users)
            wall, cpu, rep = await timed_import(
                stack, data, test_connections="true", concurrency=concurrency
            )
        finally:
            await stop(stack)
        raw_s.append(await raw_checks(raw_after, dovecot.imaps_port, smtp_port, concurrency))
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
        await asyncio.to_thread(dovecot.cleanup)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    servers = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    raw_mean = sum(raw_s) / len(raw_s)
    return {
        "rows": n,
        "seconds": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "servers_cpu_s": round(servers, 2),
        "raw_seconds_before": round(raw_s[0], 2),
        "raw_seconds_after": round(raw_s[1], 2),
        "ratio_to_raw": round(wall / raw_mean, 3),
        "load_1m": round(os.getloadavg()[0], 2),
        "created": rep["created"],
        "errors": rep["errors"],
    }


async def plain_run(tmp: Path, nats: NatsServer, n: int, again: bool) -> list[dict[str, Any]]:
    stack = await start(tmp, nats)
    out = []
    try:
        data = csv_file(n)
        wall, cpu, rep = await timed_import(stack, data)
        out.append(
            {
                "rows": n,
                "seconds": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "created": rep["created"],
                "errors": rep["errors"],
            }
        )
        if again:
            wall, cpu, rep = await timed_import(stack, data)
            out.append(
                {
                    "rows": n,
                    "seconds": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "unchanged": rep["unchanged"],
                    "errors": rep["errors"],
                }
            )
    finally:
        await stop(stack)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mailroom-bench-import-"))
    nats = NatsServer(tmp / "nats")
    nats.start()
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("import_1k", lambda: plain_run(tmp / "a", nats, args.rows, False)),
        ("import_10k", lambda: plain_run(tmp / "b", nats, args.big, True)),
        ("import_1k_tested", lambda: tested_run(tmp / "c", nats, args.tested, args.concurrency)),
    ]
    try:
        for name, run in steps:
            if name not in args.only.split(","):
                continue
            got = await run()
            if isinstance(got, list):
                result[name] = got[0]
                if len(got) > 1:
                    result[f"{name}_rerun"] = got[1]
            else:
                result[name] = got
    finally:
        for drop in _DROPS:
            await drop()
        nats.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result["database"] = "postgresql" if POSTGRES else "sqlite"
    return result


def show(result: dict[str, Any]) -> None:
    t = Table(
        title=f"Bulk import ({result['cpus']} CPUs, load {result['load_before']:.1f} at start)"
    )
    for c in ("run", "rows", "seconds", "CPU s", "rows/s", "outcome", "goal"):
        t.add_column(c, justify="right" if c not in ("run", "outcome") else "left")
    for name in ("import_1k", "import_10k", "import_10k_rerun", "import_1k_tested"):
        r = result.get(name)
        if not r:
            continue
        if "skipped" in r:
            t.add_row(name, "", "", "", "", f"skipped: {r['skipped']}", "")
            continue
        outcome = ", ".join(f"{k} {r[k]}" for k in ("created", "unchanged", "errors") if k in r)
        goal = GOALS.get(name)
        verdict = (
            "" if goal is None else f"< {goal:g} s {'ok' if r['seconds'] < goal else 'MISSED'}"
        )
        t.add_row(
            name,
            str(r["rows"]),
            f"{r['seconds']:.2f}",
            f"{r['cpu_s']:.2f}",
            f"{r['rows'] / r['seconds']:.0f}",
            outcome,
            verdict,
        )
    Console(width=max(Console().width, 110)).print(t)
    tested = result.get("import_1k_tested") or {}
    if "servers_cpu_s" in tested:
        Console().print(
            f"raw baseline (bare aioimaplib + aiosmtplib, same checks, other new mailboxes): "
            f"{tested['raw_seconds_before']:.2f} s before, {tested['raw_seconds_after']:.2f} s "
            f"after; import / raw = {tested['ratio_to_raw']:.2f} (load {tested['load_1m']})\n"
            f"Dovecot and aiosmtpd used {tested['servers_cpu_s']:.1f} s CPU in all three "
            "(including their start-up and the first login of every new mailbox)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10000)
    parser.add_argument("--tested", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--only", default=",".join(GOALS), help="comma-separated runs: " + ", ".join(GOALS)
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--postgres", metavar="URL", help="the registry on fresh PostgreSQL DBs")
    ns = parser.parse_args()
    if ns.postgres:
        POSTGRES.append(ns.postgres)
    res = asyncio.run(main(ns))
    show(res)
    if ns.json:
        print(json.dumps(res))
