"""Helpers for the sync tests: a sync+audit stack, registry events published from the test,
the sync events seen on the bus, and a credential source holding the Dovecot passwords."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.common.events import (
    AccountAdded,
    AccountDeleted,
    AccountDisabled,
    AccountReactivated,
    AccountSettings,
    CommandContext,
    CredentialRef,
    CredentialRotated,
    Envelope,
    Event,
    Server,
)
from libs.common.ids import new_id
from libs.common.natsserver import NatsServer
from services.sync.app import SyncService
from services.sync.ports import StaticCredentials
from tests.support.dovecot import Dovecot
from tests.support.stack import Stack, start_stack, wait_until

FAST = {
    "MAILROOM_SYNC_MIN_INTERVAL_S": "0.2",
    "MAILROOM_SYNC_STARTUP_SPREAD_S": "0",
    "MAILROOM_SYNC_BACKOFF_BASE_S": "0.3",
    "MAILROOM_SYNC_BACKOFF_MAX_S": "1",
    "MAILROOM_SYNC_CONNECT_TIMEOUT_S": "5",
    "MAILROOM_SYNC_COMMAND_TIMEOUT_S": "5",
}


def raw_mail(subject: str, *, to: str = "rcpt@example.test", body: str = "secret body") -> bytes:
    return (
        f"From: Sender <sender@example.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.test>\r\n"
        f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


@dataclass
class SyncHarness:
    stack: Stack
    creds: StaticCredentials
    nc: Any = None
    seen: list[Envelope] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    tenant: str = "acme"
    _sub: Any = None

    @property
    def service(self) -> SyncService:
        svc = self.stack.host.service("sync")
        assert isinstance(svc, SyncService)
        return svc

    @property
    def engine(self) -> Any:
        return self.service.engine

    async def listen(self) -> None:
        self.nc = await nats.connect(self.stack.nats.url)

        async def on_msg(msg: Any) -> None:
            self.seen.append(Envelope.from_nats(msg.headers, msg.data))

        self._sub = await self.nc.subscribe("mailroom.*.sync.>", cb=on_msg)

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    # --- registry events --------------------------------------------------------------------
    async def publish(self, account_id: str, event: Event, tenant: str | None = None) -> None:
        version = self.versions.get(account_id, 0) + 1
        self.versions[account_id] = version
        env = Envelope.wrap(
            event,
            CommandContext(tenant or self.tenant, "admin:test"),
            aggregate_id=account_id,
            aggregate_version=version,
        )
        js = self.stack.host.runtime.js
        await js.publish(env.nats_subject, env.body(), headers=env.to_headers())

    async def add_account(
        self,
        server: Dovecot,
        user: str,
        password: str,
        *,
        protocol: str = "imap",
        security: str = "starttls",
        interval: int = 1,
        folders: list[str] | None = None,
        leave_on_server: bool = True,
        tenant: str | None = None,
    ) -> str:
        account_id = new_id()
        port = {
            ("imap", "starttls"): server.imap_port,
            ("imap", "none"): server.imap_port,
            ("imap", "ssl"): server.imaps_port,
            ("pop3", "starttls"): server.pop3_port,
            ("pop3", "none"): server.pop3_port,
            ("pop3", "ssl"): server.pop3s_port,
        }[(protocol, security)]
        settings = AccountSettings(
            incoming=Server(protocol=protocol, host=server.host, port=port, security=security),  # type: ignore[arg-type]
            username=user,
            polling_interval_s=interval,
            folders=folders or ["INBOX"],
            leave_on_server=leave_on_server,
            allow_insecure=security == "none",
        )
        self.creds.set(tenant or self.tenant, account_id, user, password)
        await self.publish(
            account_id,
            AccountAdded(
                address=f"{user}@example.test",
                protocol=protocol,  # type: ignore[arg-type]
                settings=settings,
                credential=CredentialRef(blob_id=new_id(), version=1, kek_version=1),
            ),
            tenant,
        )
        return account_id

    async def disable(self, account_id: str) -> None:
        await self.publish(account_id, AccountDisabled(reason="test"))

    async def reactivate(self, account_id: str) -> None:
        await self.publish(account_id, AccountReactivated())

    async def delete(self, account_id: str) -> None:
        await self.publish(account_id, AccountDeleted(address="x@example.test"))

    async def rotate(self, account_id: str, version: int = 2) -> None:
        ref = CredentialRef(blob_id=new_id(), version=version, kek_version=1)
        await self.publish(account_id, CredentialRotated(credential=ref))

    # --- observations -----------------------------------------------------------------------
    def events(self, name: str, account_id: str | None = None) -> list[Envelope]:
        return [
            e
            for e in self.seen
            if e.event_name == name and (account_id is None or e.aggregate_id == account_id)
        ]

    async def wait_event(
        self,
        name: str,
        account_id: str,
        pred: Callable[[dict[str, Any]], bool] = lambda d: True,
        timeout: float = 15.0,
        count: int = 1,
    ) -> list[Envelope]:
        async def check() -> list[Envelope] | None:
            found = [e for e in self.events(name, account_id) if pred(e.data)]
            return found if len(found) >= count else None

        result = await wait_until(check, timeout=timeout, interval=0.02)
        assert result is not None
        return result

    async def status(self, account_id: str, tenant: str | None = None) -> dict[str, Any]:
        r = await self.stack.call(
            "GET", f"/v1/sync/mailboxes/{account_id}", tenant=tenant or self.tenant
        )
        return r.json() if r.status_code == 200 else {"http": r.status_code}

    async def wait_state(
        self, account_id: str, state: str, timeout: float = 15.0
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            doc = await self.status(account_id)
            return doc if doc.get("status", {}).get("state") == state else None

        result = await wait_until(check, timeout=timeout, interval=0.05)
        assert result is not None
        return result

    async def force(self, account_id: str) -> None:
        r = await self.stack.call("POST", f"/v1/accounts/{account_id}/sync")
        assert r.status_code == 202, r.text


async def open_harness(
    tmp_path: Path,
    nats_server: NatsServer,
    creds: StaticCredentials | None = None,
    database_url: str | None = None,
    services: tuple[str, ...] = ("sync", "audit"),
) -> SyncHarness:
    stack = await start_stack(tmp_path, nats_server, services, database_url)
    h = SyncHarness(stack, creds or StaticCredentials())
    h.service.use_credentials(h.creds)
    await h.listen()
    return h


async def close_harness(h: SyncHarness) -> None:
    await h.close()
    await h.stack.client.aclose()
    await h.stack.host.stop()


@pytest.fixture
def sync_env(monkeypatch: pytest.MonkeyPatch, dovecot: Dovecot) -> dict[str, str]:
    env = {**FAST, "MAILROOM_SYNC_CA_FILE": str(dovecot.ca_path)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
async def harness(
    tmp_path: Path, nats_server: NatsServer, sync_env: dict[str, str]
) -> AsyncIterator[SyncHarness]:
    h = await open_harness(tmp_path, nats_server)
    try:
        yield h
    finally:
        await close_harness(h)


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)
