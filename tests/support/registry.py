"""Helpers for registry tests: request bodies, a registry+audit stack, audit/stream readers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from libs.common.host import Host
from libs.common.natsserver import NatsServer
from libs.common.subjects import STREAM
from services.audit import app as audit_app
from services.registry import app as registry_app
from services.registry.tables import credential_blobs
from tests.support.stack import Stack, make_settings, start_stack, wait_until

IMAPS = {"host": "imap.example.com", "port": 993, "security": "ssl"}
SUBMISSION = {"host": "smtp.example.com", "port": 587, "security": "starttls"}


def imap_account(address: str = "alice@example.com", **over: Any) -> dict[str, Any]:
    return {
        "address": address,
        "protocol": "imap",
        "incoming": IMAPS,
        "outgoing": SUBMISSION,
        "password": "hunter2",
        **over,
    }


async def stop(stack: Stack) -> None:
    await stack.client.aclose()
    await stack.host.stop()


@pytest.fixture
async def registry_stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    stack = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    try:
        yield stack
    finally:
        await stop(stack)


async def start_custom(tmp_path: Path, nats: NatsServer, **registry_kwargs: Any) -> Stack:
    """A registry (built with ``create_app(settings, **registry_kwargs)``) and audit."""
    settings = make_settings(tmp_path / "data", None, nats_url=nats.url)
    apps = [registry_app.create_app(settings, **registry_kwargs), audit_app.create_app(settings)]
    host = Host(apps, settings, nats.url)
    app = host.app()
    await host.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mailroom")
    return Stack(host, client, settings, nats)


async def create(stack: Stack, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    r = await stack.call("POST", "/v1/accounts", json=body or imap_account(), **kw)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def audit_types(stack: Stack, aggregate_id: str, n: int, tenant: str = "acme") -> list[str]:
    """The event names the audit trail holds for an aggregate, once it holds ``n``."""

    async def check() -> list[str] | None:
        r = await stack.call(
            "GET", "/v1/audit/events", tenant=tenant, params={"aggregate_id": aggregate_id}
        )
        names = [i["event"]["type"].split(".")[2] for i in r.json()["items"]]
        return names if len(names) >= n else None

    return await wait_until(check)


async def blob_count(stack: Stack, account_id: str | None = None) -> int:
    q = select(credential_blobs.c.blob_id)
    if account_id is not None:
        q = q.where(credential_blobs.c.account_id == account_id)
    async with stack.host.service("registry").db.read() as conn:
        return len((await conn.execute(q)).all())


async def stream_messages(js: Any, subject: str = "mailroom.>") -> list[Any]:
    info = await js.stream_info(STREAM)
    if info.state.messages == 0:
        return []
    sub = await js.subscribe(subject, stream=STREAM, ordered_consumer=True)
    out = [await sub.next_msg(timeout=5) for _ in range(info.state.messages)]
    await sub.unsubscribe()
    return out
