"""Authz check benchmark: in-process evaluate(), checks over NATS request-reply, and a raw NATS
request-reply round trip, in the same run.

(a) in-process: ``AuthzIndex.check`` (tenant lookup, clock, pure evaluate on the in-memory
    index) on a synthetic tenant: random principals, mailboxes and actions.
(b) over NATS: ``AuthzClient.check`` → ``mailroom-rpc.authz.check`` answered by the authz
    service (faststream subscriber, same index), one at a time and with requests in flight.
(c) raw: nats-py request-reply to a bare echo subscriber (the floor for (b)).

The service's index is seeded in memory with the same synthetic tenant (the benchmark is about
checks; how the state got there does not matter to them).

    python bench/authz.py [--mailboxes 2000] [--employees 1000] [--checks 200000]
                          [--rpc 5000] [--inflight 32] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.common.auth import Principal
from libs.common.authz_client import AuthzClient
from libs.common.events import (
    AccessGranted,
    AccountAdded,
    AccountSettings,
    EmployeeAdded,
    Event,
)
from libs.common.host import Host
from libs.common.nats import connect
from libs.common.natsserver import NatsServer
from libs.common.settings import Settings
from services.authz import domain
from services.authz.app import AuthzService, create_app
from services.authz.index import AuthzIndex

TENANT = "bench"
ACTIONS = ("read", "move", "send", "configure", "flag", "list")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def synthetic_state(mailboxes: int, employees: int, seed: int = 7) -> domain.TenantState:
    """Employees in 20 departments; each mailbox: an owner, 5 employee grants, 1 department."""
    rnd = random.Random(seed)
    emps = [f"e{i}" for i in range(employees)]
    history: list[tuple[Event, str]] = []
    for e in emps:
        dept = f"d{rnd.randrange(20)}"
        history.append((EmployeeAdded(name=e, email=f"{e}@x.org", department=dept), e))
    for m in range(mailboxes):
        mb = f"m{m}"
        added = AccountAdded(
            address=f"{mb}@x.org",
            protocol="imap",
            owner_id=rnd.choice(emps),
            settings=AccountSettings(),
        )
        history.append((added, mb))
        for grantee in rnd.sample(emps, 5):
            level = rnd.choice(("read", "write", "send", "configure"))
            expires = "2099-01-01T00:00:00Z" if rnd.random() < 0.2 else None
            history.append(
                (
                    AccessGranted(
                        grantee_kind="employee", grantee_id=grantee, level=level, expires_at=expires
                    ),
                    mb,
                )
            )
        dept_grant = AccessGranted(
            grantee_kind="department", grantee_id=f"d{rnd.randrange(20)}", level="read"
        )
        history.append((dept_grant, mb))
    return domain.build_state(TENANT, history)


def workload(
    state: domain.TenantState, n: int, employees: int, seed: int = 11
) -> list[tuple[Principal, str, str]]:
    """60% of checks by someone related to the mailbox (owner, grantee, department member)."""
    rnd = random.Random(seed)
    people = [Principal(TENANT, f"e{i}", "employee") for i in range(employees)]
    people.append(Principal(TENANT, "root", "admin"))
    people.append(Principal(TENANT, "bot", "service", scopes=frozenset({"events:read"})))
    by_dept: dict[str, list[str]] = {}
    for e in state.employees.values():
        by_dept.setdefault(e.department or "", []).append(e.employee_id)
    mailboxes = sorted(state.mailboxes)
    out = []
    for _ in range(n):
        mb = rnd.choice(mailboxes)
        who = rnd.choice(people)
        if rnd.random() < 0.6:
            related = [state.mailboxes[mb].owner_id or ""]
            for kind, gid in state.grants.get(mb, {}):
                related += [gid] if kind == "employee" else by_dept.get(gid, [])[:5]
            who = Principal(TENANT, rnd.choice(related), "employee")
        out.append((who, mb, rnd.choice(ACTIONS)))
    return out


def in_process(index: AuthzIndex, work: list[tuple[Principal, str, str]]) -> dict[str, float]:
    check = index.check
    start = time.perf_counter()
    allowed = sum(check(p, mb, a).allowed for p, mb, a in work)
    rate = len(work) / (time.perf_counter() - start)
    lat = []
    clock = time.perf_counter_ns
    for p, mb, a in work[: min(len(work), 50_000)]:
        t0 = clock()
        check(p, mb, a)
        lat.append((clock() - t0) / 1000)
    return {
        "checks_per_s": rate,
        "p50_us": pct(lat, 0.5),
        "p99_us": pct(lat, 0.99),
        "allowed_ratio": allowed / len(work),
    }


async def over_nats(
    client: AuthzClient, work: list[tuple[Principal, str, str]], inflight: int
) -> dict[str, float]:
    for p, mb, a in work[:200]:  # warm-up
        await client.check(p, mb, a)
    lat = []
    start = time.perf_counter()
    for p, mb, a in work:
        t0 = time.perf_counter()
        d = await client.check(p, mb, a)
        lat.append((time.perf_counter() - t0) * 1e6)
        assert d.reason not in ("unavailable", "bad_request"), d
    sequential = len(work) / (time.perf_counter() - start)
    queue = iter(work)

    async def worker() -> None:
        for p, mb, a in queue:
            await client.check(p, mb, a)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    concurrent = len(work) / (time.perf_counter() - start)
    return {
        "checks_per_s": sequential,
        "p50_us": pct(lat, 0.5),
        "p99_us": pct(lat, 0.99),
        "concurrent_checks_per_s": concurrent,
    }


async def raw_nats(url: str, n: int) -> dict[str, float]:
    server_nc = await connect(url, name="bench-echo")
    client_nc = await connect(url, name="bench-echo-client")

    async def echo(msg: Any) -> None:
        await msg.respond(b'{"allowed":true,"reason":"echo"}')

    await server_nc.subscribe("bench.echo", cb=echo)
    await server_nc.flush()
    payload = json.dumps(
        {
            "principal": {"tenant_id": TENANT, "subject": "e1", "role": "employee"},
            "mailbox_id": "m1",
            "action": "read",
        }
    ).encode()
    for _ in range(200):
        await client_nc.request("bench.echo", payload, timeout=2)
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await client_nc.request("bench.echo", payload, timeout=2)
        lat.append((time.perf_counter() - t0) * 1e6)
    rate = n / (time.perf_counter() - start)
    await client_nc.close()
    await server_nc.close()
    return {"checks_per_s": rate, "p50_us": pct(lat, 0.5), "p99_us": pct(lat, 0.99)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    state = synthetic_state(args.mailboxes, args.employees)
    work = workload(state, args.checks, args.employees)
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            settings = Settings(data_dir=Path(tmp) / "data", nats_url=server.url)
            svc = create_app(settings)
            host = Host([svc], settings, server.url)
            await host.start()
            try:
                assert isinstance(svc, AuthzService) and svc.index is not None
                svc.index.tenants[TENANT] = state
                local = in_process(svc.index, work)
                nc = await connect(server.url, name="bench-authz-client")
                remote = await over_nats(AuthzClient(nc), work[: args.rpc], args.inflight)
                await nc.close()
                raw = await raw_nats(server.url, args.rpc)
            finally:
                await host.stop()
        finally:
            server.stop()
    r2 = {k: round(v, 3 if k == "allowed_ratio" else 1) for k, v in local.items()}
    return {
        "in_process": r2,
        "nats": {k: round(v, 1) for k, v in remote.items()},
        "raw_nats": {k: round(v, 1) for k, v in raw.items()},
        "targets_met": {
            "in_process_checks_per_s>=50000": local["checks_per_s"] >= 50_000,
            "nats_p99_ms<=5": remote["p99_us"] <= 5_000,
        },
        "params": {
            "mailboxes": args.mailboxes,
            "employees": args.employees,
            "grants": sum(len(g) for g in state.grants.values()),
            "checks": args.checks,
            "rpc": args.rpc,
            "inflight": args.inflight,
        },
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        ("in-process AuthzIndex.check", r["in_process"]),
        ("AuthzClient.check over NATS (1 at a time)", r["nats"]),
        (
            f"  same, {r['params']['inflight']} in flight",
            {"checks_per_s": r["nats"]["concurrent_checks_per_s"]},
        ),
        ("raw NATS request-reply (echo)", r["raw_nats"]),
    ]
    width = max(len(k) for k, _ in rows)
    out = [f"{'path':<{width}}  {'checks/s':>12}  {'p50 µs':>9}  {'p99 µs':>9}"]
    out.append("-" * (width + 38))
    for name, m in rows:
        p50 = f"{m['p50_us']:.1f}" if "p50_us" in m else ""
        p99 = f"{m['p99_us']:.1f}" if "p99_us" in m else ""
        out.append(f"{name:<{width}}  {m['checks_per_s']:>12,.0f}  {p50:>9}  {p99:>9}")
    p = r["params"]
    out.append(
        f"tenant: {p['mailboxes']} mailboxes, {p['employees']} employees, "
        f"{p['grants']} grants; targets met: {r['targets_met']}"
    )
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mailboxes", type=int, default=2000)
    parser.add_argument("--employees", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=200_000)
    parser.add_argument("--rpc", type=int, default=5000)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    result = asyncio.run(main(ns))
    print(table(result))
    if ns.json:
        print(json.dumps(result))
