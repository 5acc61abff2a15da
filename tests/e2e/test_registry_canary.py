"""Canary: a planted password appears nowhere except in the lease reply.

Not in any API response, not in the logs (DEBUG), not in the registry's events/outbox or any
byte of its database files, not in the JetStream stream (messages or files on disk), not in the
audit store.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from libs.common.leases import LEASE_SUBJECT, LeaseRefused, lease_credential
from libs.common.nats import connect
from libs.common.natsserver import NatsServer
from services.audit.tables import entries
from tests.support.registry import imap_account, stop, stream_messages
from tests.support.stack import start_stack, wait_until

pytestmark = [pytest.mark.connected, pytest.mark.e2e]


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_planted_password_leaks_nowhere_but_the_lease(
    tmp_path: Path, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = [f"CANARY-{uuid.uuid4()}" for _ in range(4)]
    s = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    bodies: list[str] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        bodies.append(f"{response.status_code} {dict(response.headers)} {response.text}")

    s.client.event_hooks["response"].append(keep)
    nc = await connect(nats_server.url, name="canary-test")
    try:
        key = {"Idempotency-Key": "canary-1"}
        body = imap_account(password=canaries[0], forwarding=["x@example.com"])
        r = await s.call("POST", "/v1/accounts", json=body, headers=key)
        account = r.json()["id"]
        await s.call("POST", "/v1/accounts", json=body, headers=key)  # replay
        await s.call("POST", "/v1/accounts", json=imap_account(password=canaries[0]))  # dup
        bad: list[dict[str, Any]] = [
            imap_account(
                "b@example.com",
                password=canaries[0],
                incoming={"host": "h", "port": 993, "security": "starttls"},
            ),
            {**imap_account("c@example.com"), "passwd": canaries[0]},
            imap_account("d@example.com", password=123),
            imap_account("e@example.com", password="x" * 9000 + canaries[0]),
        ]
        for b in bad:
            assert (await s.call("POST", "/v1/accounts", json=b)).status_code == 422
        url = f"/v1/accounts/{account}"
        await s.call("PATCH", url, json={"display_name": "Canary"})
        await s.call("PATCH", url, json={"password": canaries[1]})  # not a field: refused
        await s.call("PUT", f"{url}/credential", json={"password": canaries[1]})
        await s.call("PUT", f"{url}/credential", json={"password": canaries[1], "x": 1})
        await s.call("GET", url)
        await s.call("GET", "/v1/accounts")
        await s.call("POST", f"{url}/disable")
        await s.call("POST", f"{url}/reactivate")
        await s.call("POST", "/v1/admin/keys/rotate")
        await s.call("GET", "/v1/admin/keys")
        doomed = (
            await s.call(
                "POST", "/v1/accounts", json=imap_account("z@example.com", password=canaries[2])
            )
        ).json()
        await s.call("DELETE", f"/v1/accounts/{doomed['id']}")
        other = await s.call(
            "POST", "/v1/accounts", tenant="globex", json=imap_account(password=canaries[3])
        )
        await s.call("GET", url, tenant="globex")

        lease = await lease_credential(nc, "acme", account, "sync", "canary")
        assert lease.secret.get_secret_value() == canaries[1]
        raw = await nc.request(
            LEASE_SUBJECT,
            json.dumps(
                {
                    "tenant_id": "globex",
                    "account_id": other.json()["id"],
                    "service": "sender",
                    "purpose": "canary",
                }
            ).encode(),
            timeout=5,
        )
        assert canaries[3] in raw.data.decode()  # the lease reply is the one place it goes
        with pytest.raises(LeaseRefused):
            await lease_credential(nc, "acme", "missing", "sync", "canary")
        registry_db = s.host.service("registry").db
        async with registry_db.read() as conn:
            events = int(
                (
                    await conn.execute(select(func.count()).select_from(registry_db.tables.events))
                ).scalar()
                or 0
            )

        async def audited() -> bool:
            async with s.host.service("audit").db.read() as conn:
                n = (await conn.execute(select(func.count()).select_from(entries))).scalar()
            return n == events

        await wait_until(audited)
        await s.call("GET", "/v1/audit/events", params={"limit": 1000})
        await s.call("GET", "/v1/audit/export")
        await s.call("GET", "/v1/audit/export", tenant="globex")
        await s.client.get("/openapi.json")
        messages = await stream_messages(nc.jetstream())
    finally:
        await nc.close()
        await stop(s)

    assert events == 11 and len(messages) == events
    stream_text = "\n".join(f"{m.headers} {m.data.decode()}" for m in messages)
    log_text = caplog.text + "\n".join(str(rec.__dict__) for rec in caplog.records)
    assert len(bodies) >= 25 and any("has_credential" in b for b in bodies)
    db_bytes = {p: p.read_bytes() for p in files_under(s.settings.data_dir)}
    assert any(p.name.startswith("registry.db") for p in db_bytes)
    nats_bytes = {p: p.read_bytes() for p in files_under(nats_server.data_dir)}
    assert nats_bytes
    for canary in canaries:
        for b in bodies:
            assert canary not in b, b[:300]
        assert canary not in log_text
        assert canary not in stream_text
        for path, data in {**db_bytes, **nats_bytes}.items():
            assert canary.encode() not in data, path
