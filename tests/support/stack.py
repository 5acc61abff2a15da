"""Run services in-process against a real nats-server, and call their HTTP API."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from libs.common.auth import Role
from libs.common.host import Host
from libs.common.natsserver import NatsServer
from libs.common.settings import Settings

T = TypeVar("T")
ALL_SERVICES = ("registry", "authz", "sync", "sender", "audit")


async def wait_until(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll ``check`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: T | None = None
    while True:
        last = await check()
        if last:
            return last
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


@dataclass
class Stack:
    host: Host
    client: httpx.AsyncClient
    settings: Settings
    nats: NatsServer

    def token(self, tenant: str = "acme", subject: str = "admin", role: Role = "admin") -> str:
        assert self.host.runtime.issuer is not None
        return self.host.runtime.issuer.issue(tenant, subject, role)

    def auth(
        self, tenant: str = "acme", subject: str = "admin", role: Role = "admin"
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, subject, role)}"}

    async def call(
        self,
        method: str,
        url: str,
        *,
        tenant: str = "acme",
        subject: str = "admin",
        role: Role = "admin",
        **kw: Any,
    ) -> httpx.Response:
        headers = {**self.auth(tenant, subject, role), **kw.pop("headers", {})}
        return await self.client.request(method, url, headers=headers, **kw)


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url, **overrides)


async def start_stack(
    tmp_path: Path,
    nats: NatsServer,
    services: tuple[str, ...] = ALL_SERVICES,
    database_url: str | None = None,
    **overrides: Any,
) -> Stack:
    if "authz" not in services:  # no authz service to ask: each service's own owner/admin rule
        overrides.setdefault("authz_mode", "local")
    settings = make_settings(tmp_path / "data", database_url, nats_url=nats.url, **overrides)
    apps = [
        importlib.import_module(f"services.{name}.app").create_app(settings) for name in services
    ]
    host = Host(apps, settings, nats.url)
    app = host.app()
    await host.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mailroom")
    return Stack(host, client, settings, nats)


async def _running(stack: Stack) -> AsyncIterator[Stack]:
    try:
        yield stack
    finally:
        await stack.client.aclose()
        await stack.host.stop()


@pytest.fixture
async def audit_stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    async for stack in _running(await start_stack(tmp_path, nats_server, ("audit",))):
        yield stack


@pytest.fixture
async def full_stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    """Every service in one host, on the test's nats-server."""
    async for stack in _running(await start_stack(tmp_path, nats_server)):
        yield stack
