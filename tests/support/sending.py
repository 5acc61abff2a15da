"""The whole sending path for end-to-end tests: registry, authz, sender and audit on a real
nats-server, mailboxes whose outgoing server is the aiosmtpd of ``tests.support.smtpd`` (the
credential stored in the registry and leased by the sender), and helpers to wait until the
sender's projection has caught up."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from libs.common.natsserver import NatsServer
from services.sender.app import SenderService
from services.sender.repository import SenderRepository
from tests.support.registry import stop
from tests.support.smtpd import DEFAULT_PASSWORD, DEFAULT_USER, SmtpServer
from tests.support.stack import Stack, start_stack, wait_until

SENDER_ENV = {
    "MAILROOM_SENDER_CONNECT_TIMEOUT_S": "2",
    "MAILROOM_SENDER_COMMAND_TIMEOUT_S": "2",
    "MAILROOM_SENDER_ATTEMPT_DEADLINE_S": "6",
    "MAILROOM_SENDER_CLAIM_S": "8",
    "MAILROOM_SENDER_POLL_S": "0.1",
    "MAILROOM_SENDER_SENT_COPY": "false",
}
_keys = itertools.count(1)


class Mail:
    def __init__(self, stack: Stack, smtpd: SmtpServer) -> None:
        self.stack = stack
        self.smtpd = smtpd
        self.sender = cast(SenderService, stack.host.service("sender"))

    async def employee(self, name: str, title: str = "") -> str:
        r = await self.stack.call(
            "POST", "/v1/employees", json={"name": name, "email": f"{name}@x.io", "title": title}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def mailbox(self, address: str, **over: Any) -> str:
        """An account whose outgoing server is the test SMTP server (STARTTLS + AUTH)."""
        body = {
            "address": address,
            "protocol": "imap",
            "incoming": {"host": "imap.example.com", "port": 993, "security": "ssl"},
            "outgoing": {
                "host": "127.0.0.1",
                "port": self.smtpd.starttls_port,
                "security": "starttls",
            },
            "username": DEFAULT_USER,
            "password": DEFAULT_PASSWORD,
            **over,
        }
        r = await self.stack.call("POST", "/v1/accounts", json=body)
        assert r.status_code == 201, r.text
        mailbox = str(r.json()["id"])
        await self.in_sender(lambda repo: repo.mailbox(mailbox))

        async def known_to_authz() -> bool:
            r = await self.stack.call("GET", f"/v1/mailboxes/{mailbox}/sending")
            return r.status_code == 200

        await wait_until(known_to_authz)
        return mailbox

    async def grant(self, mailbox: str, employee: str, level: str, **extra: Any) -> None:
        async def granted() -> bool:  # authz learns of a new mailbox from the event stream
            r = await self.stack.call(
                "POST",
                f"/v1/mailboxes/{mailbox}/grants",
                json={"grantee_kind": "employee", "grantee_id": employee, "level": level, **extra},
            )
            return r.status_code in (200, 201)

        await wait_until(granted)

    async def in_sender(
        self, check: Callable[[SenderRepository], Awaitable[Any]], tenant: str = "acme"
    ) -> Any:
        """Wait until the sender's projection shows what ``check`` looks for."""

        async def ok() -> Any:
            async with self.sender.db.read() as conn:
                return await check(SenderRepository(conn, tenant))

        return await wait_until(ok)

    async def send(
        self, mailbox: str, *, who: str = "admin", role: str = "admin", **body: Any
    ) -> httpx.Response:
        body.setdefault("to", ["alice@example.com"])
        body.setdefault("subject", "Hello")
        body.setdefault("text", "Hi Alice")
        return await self.stack.call(
            "POST",
            f"/v1/mailboxes/{mailbox}/messages",
            subject=who,
            role=role,  # type: ignore[arg-type]
            json=body,
            headers={"Idempotency-Key": f"k{next(_keys)}"},
        )

    async def delivered(self, n: int = 1) -> list[EmailMessage]:
        return [m.message() for m in await self.smtpd.messages_async(n)]


async def _mail(
    tmp_path: Path,
    nats_server: NatsServer,
    smtpd: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None = None,
) -> AsyncIterator[Mail]:
    for k, v in SENDER_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MAILROOM_SENDER_CA_FILE", str(smtpd.ca_path))
    services = ("registry", "authz", "sender", "audit")
    stack = await start_stack(tmp_path, nats_server, services, database_url)
    try:
        yield Mail(stack, smtpd)
    finally:
        await stop(stack)


@pytest.fixture
async def mail(
    tmp_path: Path, nats_server: NatsServer, smtpd: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Mail]:
    async for m in _mail(tmp_path, nats_server, smtpd, monkeypatch):
        yield m


@pytest.fixture
async def mail_pg(
    tmp_path: Path,
    nats_server: NatsServer,
    smtpd: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
    pg_service_url: str,
) -> AsyncIterator[Mail]:
    """The same on PostgreSQL (one database per service)."""
    async for m in _mail(tmp_path, nats_server, smtpd, monkeypatch, pg_service_url):
        yield m
