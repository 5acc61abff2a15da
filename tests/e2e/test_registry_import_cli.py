"""``mailroom accounts import`` (progress bar and summary), ``accounts test`` and ``org``
against a real HTTP server of a registry+audit stack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from libs.common.natsserver import NatsServer
from services.registry.cli import app
from services.registry.settings import RegistrySettings
from tests.support.dovecot import Dovecot
from tests.support.ports import free_port
from tests.support.registry import start_custom, stop
from tests.support.smtpd import SmtpServer
from tests.support.tlsca import session_pki

pytestmark = [pytest.mark.connected, pytest.mark.e2e]

SERVERS = "imap;imap.acme.example;993;ssl;smtp.acme.example;587;starttls"
CSV = f"""address;display_name;protocol;incoming_host;incoming_port;incoming_security;\
outgoing_host;outgoing_port;outgoing_security;password;owner_email;employee_name
ann@acme.example;Ann;{SERVERS};pw1;ann@acme.example;Ann A
bob@acme.example;[bold red]Bob[/];{SERVERS};pw2;;
bad@acme.example;=cmd;{SERVERS};pw3;;
ann@acme.example;Ann again;{SERVERS};pw1;;
"""


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    async def __call__(self, *args: str, code: int = 0) -> str:
        result: Result = await asyncio.to_thread(self.runner.invoke, app, list(args), env=self.env)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result.output


@pytest.fixture
async def cli(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Cli]:
    settings = RegistrySettings(ca_file=session_pki().ca_path, allow_private_targets=True)
    stack = await start_custom(tmp_path, nats_server, registry_settings=settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            stack.host.app(), host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    env = {
        "MAILROOM_API": f"http://127.0.0.1:{port}",
        "MAILROOM_TOKEN": stack.token(),
        "COLUMNS": "200",
    }
    try:
        yield Cli(env)
    finally:
        server.should_exit = True
        await task
        await stop(stack)


async def test_import_with_progress_and_summary(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "accounts.csv"
    f.write_bytes(CSV.encode("utf-8-sig"))
    out = await cli("accounts", "import", str(f), "--dry-run", code=1)
    assert "Dry run (nothing written)" in out and "would_create" in out
    out = await cli("accounts", "list")
    assert "ann@acme.example" not in out

    out = await cli("accounts", "import", str(f), code=1)  # one row fails: exit 1
    assert "writing" in out and "━" in out  # the progress bar
    assert "Import" in out and "Rows not imported" in out
    assert "formula_injection" in out and "duplicate" in out
    assert "=cmd" not in out  # never echoed
    summary = out[out.index("rows_total") :]
    assert "4" in summary and "2" in summary  # 4 rows, 2 created
    listed = await cli("accounts", "list")
    assert "ann@acme.example" in listed and "bob@acme.example" in listed

    again = await cli("accounts", "import", str(f), "--json", code=1)
    assert '"unchanged": 2' in again and '"created": 0' in again

    good = tmp_path / "good.csv"
    good.write_text("\n".join(CSV.splitlines()[:3]) + "\n")
    out = await cli("accounts", "import", str(good))
    assert "unchanged" in out
    missing = tmp_path / "missing.csv"
    missing.write_text("name;password\nx;y\n")
    out = await cli("accounts", "import", str(missing), code=1)
    assert "missing_columns" in out and "address" in out


async def test_org_settings_and_connection_test_from_the_cli(
    cli: Cli, dovecot: Dovecot, smtpd: SmtpServer, tmp_path: Path
) -> None:
    out = await cli(
        "org", "set",
        "--domain", "acme.example",
        "--incoming", f"127.0.0.1:{dovecot.imaps_port}:ssl",
        "--outgoing", f"127.0.0.1:{smtpd.tls_port}:ssl",
        "--username-template", "%EMAILLOCALPART%",
    )  # fmt: skip
    assert '"domains": [' in out
    assert "acme.example" in await cli("org", "show")
    user, password = dovecot.new_user()
    smtpd.add_user(user, password)
    f = tmp_path / "mine.csv"
    f.write_text(f"address,password\n{user}@acme.example,{password}\n")
    out = await cli("accounts", "import", str(f), "--test", "--json")
    report = json.loads(out[out.index("{") :])
    assert report["created"] == 1 and report["tested"], report
    assert report["rows"][0]["servers_from"] == "org_settings"
    out = await cli("accounts", "test", report["rows"][0]["account_id"])
    assert "mailbox_select" in out and "smtp_auth" in out and password not in out
