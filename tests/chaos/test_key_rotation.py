"""KEK rotation under load: no credential is lost, no lease fails, retiring too early is refused.

`mailroom up` runs with two tenants. While credentials keep being added (one by one and by CSV
import) and replaced, while sync polls (a login, so a lease, per poll), the sender sends and
leases are asked directly, the KEK is rotated (`mailroom keys rotate`, the registry's admin key
API) and the old versions are retired. Retiring a version some tenant's credentials still use
(not re-wrapped yet) is refused. Afterwards every account leases exactly its latest secret, the
real servers (Dovecot, aiosmtpd) accept the leased secrets, every lease the registry answered
was granted, and the same holds after a restart (the key file kept only the live versions).
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.common.auth import TokenIssuer, load_or_create_key
from libs.common.errors import Unavailable
from libs.common.leases import LeaseRefused, lease_credential
from libs.common.nats import connect
from libs.common.natsserver import free_port
from services.registry.keyring import KeyRing
from tests.support.dovecot import Dovecot
from tests.support.embedded import Up
from tests.support.sending import SENDER_ENV
from tests.support.smtpd import SmtpServer
from tests.support.stack import wait_until

pytestmark = [pytest.mark.connected, pytest.mark.chaos]

TENANTS = ("demo", "acme2")
LIVE = 2  # accounts per tenant on the real servers
BULK = 20  # imported accounts per tenant (their servers refuse connections)
LOAD_S = 2.0  # load before, between and after the rotations


@dataclass
class Account:
    tenant: str
    id: str
    secret: str
    pending: str | None = None  # a replacement in flight
    user: str | None = None  # live accounts: the Dovecot / aiosmtpd login


@dataclass
class World:
    up: Up
    dovecot: Dovecot
    smtpd: SmtpServer
    clients: dict[str, httpx.AsyncClient]
    accounts: dict[str, Account] = field(default_factory=dict)
    leases: int = 0
    wrong: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    timeouts: int = 0
    sends: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    names: Any = field(default_factory=itertools.count)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def secret(self) -> str:
        return f"pw-{next(self.names)}-{os.urandom(6).hex()}"

    def servers(self, live: bool) -> dict[str, Any]:
        port = self.dovecot.imap_port if live else free_port()
        return {
            "protocol": "imap",
            "incoming": {"host": self.dovecot.host, "port": port, "security": "starttls"},
            "outgoing": {
                "host": "127.0.0.1",
                "port": self.smtpd.starttls_port,
                "security": "starttls",
            },
        }

    async def add(self, tenant: str, live: bool = False) -> Account:
        secret, user = self.secret(), None
        if live:
            user, _ = self.dovecot.new_user("rot")
            self.dovecot.set_password(user, secret)
            self.smtpd.add_user(user, secret)
        n = next(self.names)
        body = {**self.servers(live), "address": f"a{n}@{tenant}.example.com",
                "username": user or f"u{n}", "password": secret}  # fmt: skip
        r = await self.clients[tenant].post("/v1/accounts", json=body)
        assert r.status_code == 201, r.text
        acc = Account(tenant, r.json()["id"], secret, user=user)
        self.accounts[acc.id] = acc
        return acc

    async def replace(self, acc: Account) -> None:
        new = self.secret()
        acc.pending = new
        url = f"/v1/accounts/{acc.id}/credential"
        r = await self.clients[acc.tenant].put(url, json={"password": new})
        assert r.status_code == 200, r.text
        acc.secret, acc.pending = new, None

    async def lease(
        self, nc: Any, acc: Account, service: str = "sync", timeout: float = 5.0
    ) -> str:
        allowed = {acc.secret, acc.pending}
        t0 = time.monotonic()
        got = await lease_credential(nc, acc.tenant, acc.id, service, "test", timeout=timeout)
        self.latencies.append((round(t0 - self.t0, 2), round(time.monotonic() - t0, 3)))
        value = got.secret.get_secret_value()
        self.leases += 1
        if value not in allowed | {acc.secret, acc.pending}:  # a replace may land meanwhile
            self.wrong.append(f"{acc.tenant}/{acc.id}: leased {value!r}, want {acc.secret!r}")
        return value


async def import_bulk(w: World, tenant: str, rows: int) -> None:
    buf = io.StringIO()
    out = csv.writer(buf)
    server = ("host", "port", "security")
    out.writerow(["address", "protocol", *(f"incoming_{x}" for x in server),
                  *(f"outgoing_{x}" for x in server), "username", "password"])  # fmt: skip
    batch = []
    for _ in range(rows):
        n, secret = next(w.names), w.secret()
        closed = ["127.0.0.1", free_port(), "starttls"]  # nothing listens there
        out.writerow([f"b{n}@{tenant}.example.com", "imap", *closed, *closed, f"b{n}", secret])
        batch.append((f"b{n}@{tenant}.example.com", secret))
    r = await w.clients[tenant].post(
        "/v1/accounts/import", content=buf.getvalue(), headers={"Content-Type": "text/csv"}
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["created"] == rows, [r.get("message") for r in report["rows"][:2]]
    by_address = dict(batch)
    for row in report["rows"]:
        acc = Account(tenant, row["account_id"], by_address[row["address"]])
        w.accounts[acc.id] = acc


# --- the load ----------------------------------------------------------------------------------
async def adding(w: World) -> None:
    while not w.stop.is_set():
        await w.add(random.choice(TENANTS))
        await asyncio.sleep(0.3)


async def replacing(w: World) -> None:
    while not w.stop.is_set():
        bulk = [a for a in w.accounts.values() if a.user is None and a.pending is None]
        await w.replace(random.choice(bulk))
        await asyncio.sleep(0.02)


async def leasing(w: World, nc: Any) -> None:
    while not w.stop.is_set():
        acc = random.choice(list(w.accounts.values()))
        try:
            await w.lease(nc, acc, random.choice(("sync", "sender")))
        except Unavailable:  # no answer within sync's and sender's 5 s: they retry; so do we
            w.timeouts += 1
            await w.lease(nc, acc, timeout=60)
        except LeaseRefused as exc:  # never: no lease is refused during a rotation
            w.refused.append(f"{acc.tenant}/{acc.id}: {exc.code}: {exc.message}")
        await asyncio.sleep(0.01)


async def syncing_and_sending(w: World) -> None:
    live = [a for a in w.accounts.values() if a.user is not None]
    keys = itertools.count()
    while not w.stop.is_set():
        acc = random.choice(live)
        c = w.clients[acc.tenant]
        r = await c.post(f"/v1/accounts/{acc.id}/sync")
        assert r.status_code in (202, 409), r.text  # 409: a poll is running already
        body = {"to": ["rcpt@example.com"], "subject": "rotation", "text": "hi"}
        r = await c.post(f"/v1/mailboxes/{acc.id}/messages", json=body,
                         headers={"Idempotency-Key": f"rot-{next(keys)}"})  # fmt: skip
        # sent, or queued for a retry when the registry answered the lease too late
        ok = r.status_code == 201 or r.json().get("reason_class") == "server_down"
        assert ok, r.text
        w.sends[r.json()["status"]] = w.sends.get(r.json()["status"], 0) + 1
        await asyncio.sleep(0.3)


# --- the rotation --------------------------------------------------------------------------------
def mailroom(w: World, *args: str, tenant: str = "demo") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILROOM_DATA_DIR": str(w.up.data_dir), "MAILROOM_API": w.up.base,
           "MAILROOM_TENANT": tenant}  # fmt: skip
    env.pop("MAILROOM_TOKEN", None)
    exe = Path(sys.executable).with_name("mailroom")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=60)


async def keys(w: World, op: str, tenant: str = "demo", **body: Any) -> httpx.Response:
    c = w.clients[tenant]
    if op == "status":
        return await c.get("/v1/admin/keys")
    return await c.post(f"/v1/admin/keys/{op}", json=body, timeout=120)


async def rotate_and_retire(w: World) -> list[str]:
    """Two rounds: `mailroom keys rotate` / `retire` (CLI), then the admin key API while a CSV
    import seals credentials at the same time."""
    steps: list[str] = []

    def step(text: str) -> None:
        steps.append(f"{time.monotonic() - w.t0:.1f}s {text}")

    r = await keys(w, "retire", version=1)
    assert r.status_code == 409 and r.json()["error"]["code"] == "kek_active", r.text
    for old in (1, 2):
        await asyncio.sleep(LOAD_S)
        late = asyncio.create_task(import_bulk(w, "demo", BULK)) if old == 2 else None
        if old == 1:
            out = await asyncio.to_thread(mailroom, w, "keys", "rotate")  # demo's credentials
            assert out.returncode == 0, out.stdout + out.stderr
            step(out.stdout.strip())
        else:
            r = await keys(w, "rotate")
            assert r.status_code == 200 and not r.json()["failed"], r.text
            step(f"demo rotated: {r.json()['rewrapped']} re-wrapped")
        # acme2's credentials are still wrapped under the old version: retiring it is refused
        r = await keys(w, "retire", version=old)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "kek_in_use" and r.json()["error"]["details"]["blobs"]
        r = await keys(w, "rotate", tenant="acme2", generate=False)
        assert r.status_code == 200 and not r.json()["failed"], r.text
        step(f"acme2 rotated: {r.json()['rewrapped']} re-wrapped; retire refused before")
        if late is not None:
            await late
        if old == 1:
            out = await asyncio.to_thread(mailroom, w, "keys", "retire", str(old))
            assert out.returncode == 0, out.stdout + out.stderr
            step(out.stdout.strip())
            continue
        r = await keys(w, "retire", version=old)
        if r.status_code == 409:  # the import sealed some under the old key meanwhile
            assert r.json()["error"]["code"] == "kek_in_use", r.text
            step(f"retire refused: {r.json()['error']['details']}; rotating again")
            assert (await keys(w, "rotate", generate=False)).status_code == 200
            r = await keys(w, "retire", version=old)
        assert r.status_code == 200, r.text
        step(r.json()["message"])
    await asyncio.sleep(LOAD_S)
    return steps


# --- the test ------------------------------------------------------------------------------------
def _env(mp: pytest.MonkeyPatch, dovecot: Dovecot, smtpd: SmtpServer) -> None:
    env = {
        **SENDER_ENV,
        "MAILROOM_SYNC_CA_FILE": str(dovecot.ca_path),
        "MAILROOM_SENDER_CA_FILE": str(smtpd.ca_path),
        "MAILROOM_SYNC_MAX_CONNECTIONS": "0",  # a login, so a lease, on every poll
        "MAILROOM_REGISTRY_LEASE_TTL_S": "31",  # sync and sender lease again after ~1 s
        "MAILROOM_REGISTRY_ROTATE_BATCH": "50",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    for k in ("MAILROOM_KEKS", "MAILROOM_KEKS_FILE", "MAILROOM_LOG_LEVEL"):
        mp.delenv(k, raising=False)


def clients(up: Up) -> dict[str, httpx.AsyncClient]:
    issuer = TokenIssuer(load_or_create_key(up.data_dir / "auth_ed25519.pem"))
    return {
        t: httpx.AsyncClient(
            base_url=up.base,
            timeout=30,
            headers={"Authorization": f"Bearer {issuer.issue(t, 'admin', 'admin')}"},
        )
        for t in TENANTS
    }


async def verify(w: World, since: float) -> None:
    """Every account leases its latest secret; the live ones log in with it (sync and send)."""
    nc = await connect((w.up.data_dir / "nats.url").read_text(), name="rotation-verify")
    gate = asyncio.Semaphore(8)

    async def check(acc: Account) -> None:
        async with gate:
            assert await w.lease(nc, acc, timeout=30) == acc.secret, acc

    try:
        await asyncio.gather(*(check(acc) for acc in w.accounts.values()))
    finally:
        await nc.close()

    assert not w.wrong, w.wrong[:5]
    await verify_logins(w, since)


async def verify_logins(w: World, since: float, send: bool = True) -> None:
    """The live accounts log in with the leased secret: a sync poll, a send."""
    sent = len(w.smtpd.messages)
    for acc in (a for a in w.accounts.values() if a.user is not None):
        c = w.clients[acc.tenant]

        async def online(acc: Account = acc, c: httpx.AsyncClient = c) -> bool:
            if (await c.post(f"/v1/accounts/{acc.id}/sync")).status_code == 404:
                return False  # sync has not seen the account yet
            doc = (await c.get(f"/v1/sync/mailboxes/{acc.id}")).json()["status"]
            last = doc["last_success_at"]
            return doc["state"] == "online" and last is not None and _ts(last) > since

        await wait_until(online, timeout=30, interval=0.2)
        if not send:
            continue
        body = {"to": ["rcpt@example.com"], "subject": "after", "text": "hi"}
        r = await c.post(f"/v1/mailboxes/{acc.id}/messages", json=body,
                         headers={"Idempotency-Key": f"after-{acc.id}-{since}"})  # fmt: skip
        assert r.status_code == 201 and r.json()["status"] == "sent", r.text
    assert len(w.smtpd.messages) == sent + (LIVE * len(TENANTS) if send else 0)


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


async def test_kek_rotation_under_load_loses_no_credential(
    up: Up, dovecot: Dovecot, smtpd: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    _env(monkeypatch, dovecot, smtpd)
    up.start()
    w = World(up, dovecot, smtpd, clients(up))
    try:
        for tenant in TENANTS:
            for _ in range(LIVE):
                await w.add(tenant, live=True)
            await import_bulk(w, tenant, BULK)
        await verify_logins(w, 0.0, send=False)  # sync knows and logged in to every live one
        nc = await connect((up.data_dir / "nats.url").read_text(), name="rotation-load")
        jobs = (adding(w), replacing(w), leasing(w, nc), leasing(w, nc), syncing_and_sending(w))
        load = [asyncio.create_task(job) for job in jobs]
        try:
            steps = await rotate_and_retire(w)
        finally:
            w.stop.set()
            await asyncio.gather(*load)
            await nc.close()
        status = (await keys(w, "status")).json()
        assert status["versions"] == [3] and status["active_version"] == 3, (status, steps)
        assert set(status["blobs_by_version"]) == {"3"}, status
        ring = KeyRing.from_json((up.data_dir / "keks.json").read_text())
        assert ring.versions == (3,)
        assert not w.refused, w.refused[:5]
        await verify(w, time.time() - 1)
        metrics = (await w.clients["demo"].get("/metrics")).text
        outcomes = [
            ln for ln in metrics.splitlines() if ln.startswith("mailroom_credential_leases_total")
        ]
        assert outcomes and all('outcome="granted"' in ln for ln in outcomes), outcomes

        assert up.stop() == 0  # a restart reads the key file the retirements wrote
        up.start()
        await verify(w, time.time() - 1)
    finally:
        for c in w.clients.values():
            await c.aclose()
    lat = sorted(x[1] for x in w.latencies)
    print(f"{len(w.accounts)} accounts, {w.leases} leases checked (p50 {lat[len(lat) // 2]} s,",
          f"max {lat[-1]} s, {w.timeouts} after 5 s), sends {w.sends}, {steps}")  # fmt: skip
    assert time.monotonic() - started < 90
