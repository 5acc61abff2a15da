"""``mailroom accounts|employees|keys`` against a real HTTP server of the registry+audit stack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from libs.common.natsserver import NatsServer
from services.registry.cli import app
from tests.support.ports import free_port
from tests.support.registry import stop
from tests.support.stack import Stack, start_stack

pytestmark = [pytest.mark.connected, pytest.mark.e2e]


class Cli:
    def __init__(self, stack: Stack, base: str) -> None:
        self.env = {"MAILROOM_API": base, "MAILROOM_TOKEN": stack.token(), "COLUMNS": "250"}
        self.runner = CliRunner()

    async def run(self, args: tuple[str, ...], input: str | None, code: int) -> Result:
        result = await asyncio.to_thread(
            self.runner.invoke, app, list(args), input=input, env=self.env
        )
        assert result.exit_code == code, (args, result.output, result.exception)
        return result

    async def __call__(self, *args: str, input: str | None = None, code: int = 0) -> str:
        return (await self.run(args, input, code)).output  # stdout and stderr

    async def json(self, *args: str, input: str | None = None) -> Any:
        return json.loads((await self.run(args, input, 0)).stdout)


@pytest.fixture
async def cli(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Cli]:
    stack = await start_stack(tmp_path, nats_server, ("registry", "audit"))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            stack.host.app(), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield Cli(stack, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task
        await stop(stack)


async def test_accounts_employees_and_keys_from_the_cli(cli: Cli) -> None:
    emp = await cli.json(
        "employees", "add", "Ada Lovelace", "ada@example.com", "--department", "R&D"
    )
    a = await cli.json(
        "accounts",
        "add",
        "ada@example.com",
        "--protocol",
        "imap",
        "--incoming",
        "imap.example.com:993:ssl",
        "--outgoing",
        "smtp.example.com:587:starttls",
        "--owner",
        emp["id"],
        "--forward",
        "boss@example.com",
        "--password-stdin",
        input="pw-from-stdin\n",
    )
    assert a["has_credential"] and a["owner_id"] == emp["id"]
    assert a["forwarding"] == ["boss@example.com"]
    listed = await cli("accounts", "list")
    assert "ada@example.com" in listed and "pw-from-stdin" not in listed
    g = await cli.json(
        "accounts",
        "add",
        "team@gmail.com",
        "--preset",
        "gmail",
        "--shared",
        input="app-pw\napp-pw\n",
    )  # hidden prompt with confirmation
    assert g["incoming"]["host"] == "imap.gmail.com" and g["ownership"] == "shared"
    assert [
        x["id"] for x in await cli.json("accounts", "list", "--json", "--ownership", "shared")
    ] == [g["id"]]
    out = await cli(
        "accounts",
        "add",
        "bad@example.com",
        "--protocol",
        "imap",
        "--incoming",
        "imap.example.com:993:starttls",
        "--outgoing",
        "smtp.example.com:587:starttls",
        "--no-password",
        code=1,
    )
    assert "invalid_server" in out
    updated = await cli.json(
        "accounts", "update", a["id"], "--display-name", "Ada", "--poll", "600"
    )
    assert (updated["display_name"], updated["polling_interval_s"]) == ("Ada", 600)
    assert "version 2" in await cli(
        "accounts", "set-password", a["id"], "--password-stdin", input="second\n"
    )
    assert "disabled" in await cli("accounts", "disable", a["id"], "--reason", "leave")
    assert "account_disabled" in await cli("accounts", "update", a["id"], "--poll", "60", code=1)
    assert "active" in await cli("accounts", "reactivate", a["id"])

    status = await cli.json("keys", "status")
    assert status["active_version"] == 1 and status["blobs_by_version"] == {"1": 2}
    assert "kek_active" in await cli("keys", "retire", "1", code=1)
    assert "2 credential(s) re-wrapped" in await cli("keys", "rotate")
    assert "removed from the embedded key file" in await cli("keys", "retire", "1")

    assert "R&D" in await cli("employees", "departments")
    assert "offboarded" in await cli("employees", "offboard", emp["id"])
    assert "Ada Lovelace" in await cli("employees", "list", "--status", "offboarded")
    assert "shredded" in await cli("accounts", "delete", a["id"], "--yes")
    assert "not_found" in await cli("accounts", "show", a["id"], code=1)
    out = await cli("accounts", "add", "x@example.com", "--incoming", "nonsense", code=2)
    assert "host:port:security" in out
