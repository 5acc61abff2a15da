"""Helpers for the authz tests: an authz+audit stack on SQLite or PostgreSQL (parametrised),
an AuthzClient, and helpers that play the registry by publishing its events into the stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from libs.common.auth import Principal, Role
from libs.common.authz_client import AuthzClient
from libs.common.events import (
    AccountAdded,
    AccountSettings,
    CommandContext,
    EmployeeAdded,
    Envelope,
    Event,
)
from libs.common.ids import new_id
from libs.common.natsserver import NatsServer
from services.authz.app import AuthzService
from services.authz.index import AuthzIndex
from tests.support.stack import Stack, start_stack, wait_until


class World:
    """The stack, an AuthzClient, and helpers to play the registry."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.svc = cast(AuthzService, stack.host.service("authz"))
        assert self.svc.index is not None
        self.index: AuthzIndex = self.svc.index
        self.client = AuthzClient(stack.host.runtime.nc)
        self.versions: dict[str, int] = {}

    async def registry(self, *events: tuple[Event, str], tenant: str = "acme") -> None:
        """Publish registry events and wait until authz has applied them."""
        before = self.index.revision(tenant)
        js: Any = self.stack.host.runtime.js
        for event, agg in events:
            self.versions[agg] = self.versions.get(agg, 0) + 1
            ctx = CommandContext(tenant, "admin:registry")
            env = Envelope.wrap(event, ctx, aggregate_id=agg, aggregate_version=self.versions[agg])
            await js.publish(env.nats_subject, env.body(), headers=env.to_headers())

        async def applied() -> bool:
            return self.index.revision(tenant) >= before + len(events)

        await wait_until(applied)

    async def employee(self, dept: str | None = None, tenant: str = "acme") -> str:
        emp = new_id()
        await self.registry(
            (EmployeeAdded(name="E", email="e@x.org", department=dept), emp), tenant=tenant
        )
        return emp

    async def mailbox(self, owner: str | None, tenant: str = "acme") -> str:
        mb = new_id()
        added = AccountAdded(
            address="m@x.org",
            protocol="imap",
            owner_id=owner,
            ownership="personal" if owner else "shared",
            settings=AccountSettings(),
        )
        await self.registry((added, mb), tenant=tenant)
        return mb

    async def grant(
        self,
        mb: str,
        grantee: str,
        level: str,
        *,
        by: str = "admin",
        role: Role = "admin",
        kind: str = "employee",
        **extra: Any,
    ) -> Any:
        body = {"grantee_kind": kind, "grantee_id": grantee, "level": level, **extra}
        return await self.stack.call(
            "POST", f"/v1/mailboxes/{mb}/grants", json=body, subject=by, role=role
        )

    async def revoke(self, mb: str, grantee: str, kind: str = "employee", **kw: Any) -> Any:
        return await self.stack.call("DELETE", f"/v1/mailboxes/{mb}/grants/{kind}/{grantee}", **kw)

    async def check(
        self,
        who: str,
        mb: str,
        action: str,
        *,
        tenant: str = "acme",
        role: Role = "employee",
        fresh: int | None = None,
    ) -> Any:
        return await self.client.check(Principal(tenant, who, role), mb, action, fresh)

    async def audit(self, event_type: str, tenant: str = "acme") -> list[dict[str, Any]]:
        r = await self.stack.call(
            "GET", "/v1/audit/events", params={"type": event_type}, tenant=tenant
        )
        return [i["event"] for i in r.json()["items"]]


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the data directory) or one fresh PostgreSQL database per service."""
    if request.param == "postgres":
        return cast(str, request.getfixturevalue("pg_service_url"))
    return None


@pytest.fixture
async def world(
    tmp_path: Path, nats_server: NatsServer, database_url: str | None
) -> AsyncIterator[World]:
    stack = await start_stack(tmp_path, nats_server, ("authz", "audit"), database_url=database_url)
    try:
        yield World(stack)
    finally:
        await stack.client.aclose()
        await stack.host.stop()
