"""Helpers for the sender tests (no tests here): a sender+audit stack whose registry is played
by the test (events published into the stream), a static credential source, fast timeouts."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from pydantic import SecretStr

from libs.common.auth import Principal, Role
from libs.common.authz_client import Decision
from libs.common.events import (
    AccountAdded,
    AccountSettings,
    CommandContext,
    EmployeeAdded,
    Envelope,
    Event,
    Server,
)
from libs.common.ids import new_id
from libs.common.natsserver import NatsServer
from services.sender.app import SenderService
from services.sender.credentials import StaticCredentials
from services.sender.repository import SenderRepository, SendRecord
from services.sender.smtp import Credential
from tests.support.smtpd import DEFAULT_PASSWORD, DEFAULT_USER, SmtpServer
from tests.support.stack import Stack, start_stack, wait_until

FAST = {
    "MAILROOM_SENDER_CONNECT_TIMEOUT_S": "2",
    "MAILROOM_SENDER_COMMAND_TIMEOUT_S": "1.5",
    "MAILROOM_SENDER_ATTEMPT_DEADLINE_S": "6",
    "MAILROOM_SENDER_CLAIM_S": "8",
    "MAILROOM_SENDER_RETRY_BACKOFF_S": "[0.3, 0.5, 1.0]",
    "MAILROOM_SENDER_MAX_ATTEMPTS": "8",
    "MAILROOM_SENDER_POLL_S": "0.1",
    "MAILROOM_SENDER_EHLO_NAME": "sender.mailroom.test",
}
_keys = itertools.count(1)


class Grants:
    """Permissions for tests: admins may send; employees as listed, maybe on behalf."""

    def __init__(self) -> None:
        self.allowed: dict[tuple[str, str], bool] = {}  # (employee, mailbox) -> on_behalf
        self.revisions: list[int | None] = []

    async def check_send(
        self, principal: Principal, mailbox_id: str, at_least_as_fresh: int | None = None
    ) -> Decision:
        self.revisions.append(at_least_as_fresh)
        if principal.is_admin:
            return Decision(True, "admin")
        behalf = self.allowed.get((principal.subject, mailbox_id))
        if behalf is None:
            return Decision(False, "no_access")
        return Decision(True, "grant", level="send", on_behalf=behalf)


class SenderWorld:
    def __init__(self, stack: Stack, smtpd: SmtpServer, *, grants: bool = True) -> None:
        self.stack = stack
        self.smtpd = smtpd
        self.svc = cast(SenderService, stack.host.service("sender"))
        assert self.svc.wiring is not None
        self.creds = StaticCredentials()
        self.grants = Grants()
        self.svc.wiring.credentials = self.creds
        if grants:  # else the service keeps the permissions it was configured with
            self.svc.wiring.permissions = self.grants
        self.versions: dict[str, int] = {}

    async def publish(self, event: Event, agg: str, tenant: str = "acme") -> None:
        """Publish a registry event into the stream, as the registry would."""
        self.versions[agg] = self.versions.get(agg, 0) + 1
        env = Envelope.wrap(
            event,
            CommandContext(tenant, "admin:registry"),
            aggregate_id=agg,
            aggregate_version=self.versions[agg],
        )
        js: Any = self.stack.host.runtime.js
        await js.publish(env.nats_subject, env.body(), headers=env.to_headers())

    def server(self, security: str = "starttls") -> Server:
        port = {"starttls": self.smtpd.starttls_port, "ssl": self.smtpd.tls_port}[security]
        return Server(protocol="smtp", host="127.0.0.1", port=port, security=security)

    async def mailbox(
        self,
        *,
        security: str = "starttls",
        tenant: str = "acme",
        address: str = "sales@corp.example",
        protocol: str = "custom",
        owner_id: str | None = None,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        **settings: Any,
    ) -> str:
        mailbox_id = new_id()
        s = AccountSettings(outgoing=self.server(security), username=user, **settings)
        added = AccountAdded(
            address=address,
            protocol=protocol,
            settings=s,
            owner_id=owner_id,
        )
        self.creds.by_mailbox[mailbox_id] = Credential(user, SecretStr(password))
        await self.publish(added, mailbox_id, tenant)
        await self.known(mailbox_id, tenant)
        return mailbox_id

    async def known(self, mailbox_id: str, tenant: str = "acme") -> None:
        async def seen() -> bool:
            r = await self.stack.call("GET", f"/v1/mailboxes/{mailbox_id}/sending", tenant=tenant)
            return r.status_code == 200

        await wait_until(seen)

    async def applied(self, check: Any) -> None:
        """Wait until the projection shows what ``check(repo)`` looks for."""

        async def ok() -> bool:
            async with self.svc.db.read() as conn:
                return bool(await check(SenderRepository(conn, "acme")))

        await wait_until(ok)

    async def employee(self, name: str, email: str, tenant: str = "acme") -> str:
        emp = new_id()
        await self.publish(EmployeeAdded(name=name, email=email), emp, tenant)

        async def seen() -> bool:
            async with self.svc.db.read() as conn:
                return await SenderRepository(conn, tenant).employee(emp) is not None

        await wait_until(seen)
        return emp

    async def send(
        self,
        mailbox_id: str,
        key: str | None = None,
        *,
        tenant: str = "acme",
        subject_: str = "admin",
        role: Role = "admin",
        headers: dict[str, str] | None = None,
        **body: Any,
    ) -> httpx.Response:
        body.setdefault("to", ["alice@example.com"])
        body.setdefault("subject", "Hello")
        body.setdefault("text", "Hi Alice")
        hdrs = {"Idempotency-Key": key or f"k{next(_keys)}", **(headers or {})}
        return await self.stack.call(
            "POST",
            f"/v1/mailboxes/{mailbox_id}/messages",
            tenant=tenant,
            subject=subject_,
            role=role,
            json=body,
            headers=hdrs,
        )

    async def status(self, mailbox_id: str, send_id: str, want: str, timeout: float = 15) -> Any:
        async def check() -> Any:
            r = await self.stack.call("GET", f"/v1/mailboxes/{mailbox_id}/messages/{send_id}")
            doc = r.json()
            return doc if doc.get("status") == want else None

        return await wait_until(check, timeout=timeout, interval=0.05)

    async def record(self, mailbox_id: str, send_id: str) -> SendRecord:
        async with self.svc.db.read() as conn:
            found = await SenderRepository(conn, "acme").send(mailbox_id, send_id)
        assert found is not None
        return found

    async def events(
        self, mailbox_id: str, tenant: str = "acme"
    ) -> list[tuple[str, dict[str, Any]]]:
        """The sender's own events about a mailbox: (name, data)."""
        envs = await self.svc.db.load(tenant, mailbox_id)
        return [(e.event_name, e.data) for e in envs]


@pytest.fixture
async def world(
    tmp_path: Path, nats_server: NatsServer, smtpd: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[SenderWorld]:
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAILROOM_SENDER_CA_FILE", str(smtpd.ca_path))
    stack = await start_stack(tmp_path, nats_server, ("sender", "audit"))
    try:
        yield SenderWorld(stack, smtpd)
    finally:
        await stack.client.aclose()
        await stack.host.stop()
        await asyncio.sleep(0)
