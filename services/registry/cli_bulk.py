"""``mailroom accounts import|test|discover`` and ``mailroom org``: bulk import with a progress
bar and a summary, connection tests and discovery, the organisation's mail settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.registry import cli

org_app = typer.Typer(help="The organisation's mail servers.", no_args_is_help=True)
NDJSON = "application/x-ndjson"
PHASES = {"parsed": "reading", "checking": "checking", "testing": "testing", "writing": "writing"}


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:  # cells are data, never markup: a CSV may hold "[link=...]"
        t.add_row(*(escape("" if row.get(c) is None else str(row.get(c))) for c in columns))
    return t


def _fail(r: httpx.Response) -> None:
    try:
        e = r.json()["error"]
        cli.err.print(f"[red]{r.status_code} {e['code']}: {escape(e['message'])}[/red]")
    except (ValueError, KeyError, TypeError):
        cli.err.print(f"[red]{r.status_code}: {escape(r.text[:300])}[/red]")
    raise typer.Exit(1)


def _stream(client: httpx.Client, params: dict[str, Any], data: bytes) -> dict[str, Any]:
    headers = {"content-type": "text/csv", "accept": NDJSON}
    timeout = httpx.Timeout(60, read=900)
    report: dict[str, Any] | None = None
    progress = Progress(
        TextColumn("{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=cli.err,
        transient=False,
    )
    tasks: dict[str, Any] = {}
    with (
        progress,
        client.stream(
            "POST",
            "/v1/accounts/import",
            params=params,
            content=data,
            headers=headers,
            timeout=timeout,
        ) as r,
    ):
        if r.status_code >= 400:
            r.read()
            _fail(r)
        for line in r.iter_lines():
            if not line.strip():
                continue
            doc = json.loads(line)
            if "error" in doc:
                e = doc["error"]
                cli.err.print(f"[red]{e['code']}: {escape(e['message'])}[/red]")
                raise typer.Exit(1)
            if "report" in doc:
                report = doc["report"]
                continue
            p = doc["progress"]
            name = PHASES.get(p["phase"], p["phase"])
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=p["total"] or 1)
            progress.update(tasks[name], completed=p["done"], total=p["total"] or 1)
        for task_id in tasks.values():
            t = progress.tasks[task_id]
            progress.update(task_id, completed=t.total)
    if report is None:
        cli.err.print("[red]the import ended without a report[/red]")
        raise typer.Exit(1)
    return report


def import_accounts(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    dry_run: bool = typer.Option(False, "--dry-run", help="check everything, write nothing"),
    test: bool = typer.Option(False, "--test", help="connection-test each new account first"),
    concurrency: int | None = typer.Option(None, help="connection tests at once"),
    encoding: str | None = typer.Option(None, help="the file's encoding (default: detected)"),
    as_json: bool = typer.Option(False, "--json", help="print the whole report as JSON"),
) -> None:
    """Add accounts (and missing employees) from a CSV file; see README "Bulk import (CSV)".
    Exits 1 when any row failed."""
    params = cli.drop_none(
        {
            "dry_run": str(dry_run).lower(),
            "test_connections": str(test).lower(),
            "concurrency": concurrency,
            "encoding": encoding,
        }
    )
    with cli.make_client() as client:
        try:
            report = _stream(client, params, file.read_bytes())
        except httpx.HTTPError as exc:
            cli.err.print(f"[red]cannot reach the API: {type(exc).__name__}[/red]")
            raise typer.Exit(1) from None
    if as_json:
        cli.show(report)
    else:
        console = Console()
        counts = {
            k: report[k]
            for k in (
                "rows_total",
                "created",
                "would_create",
                "unchanged",
                "duplicates",
                "errors",
                "employees_created",
            )
        }
        counts["seconds"] = f"{report['elapsed_ms'] / 1000:.1f}"
        title = "Dry run (nothing written)" if report["dry_run"] else "Import"
        console.print(_table(title, [counts], list(counts)))
        bad = [r for r in report["rows"] if r["status"] in ("error", "duplicate")]
        if bad:
            console.print(
                _table("Rows not imported", bad, ["row", "address", "status", "code", "message"])
            )
        if report["ignored_columns"]:
            console.print(f"ignored columns: {escape(', '.join(report['ignored_columns']))}")
    if report["errors"]:
        raise typer.Exit(1)


def test_account(
    account_id: str,
    timeout: float | None = typer.Option(None, help="per-step timeout in seconds"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Connect to a saved account's servers with its stored credential."""
    doc = cli.call(
        "POST",
        f"/v1/accounts/{account_id}/test",
        params=cli.drop_none({"timeout_s": timeout}),
    )
    if as_json:
        cli.show(doc)
    else:
        for role in ("incoming", "outgoing"):
            check = doc.get(role)
            if check:
                where = f"{role} {check['protocol']} {check['host']}:{check['port']}"
                Console().print(_table(where, check["steps"], ["name", "status", "message"]))
    if not doc["ok"]:
        raise typer.Exit(1)


def discover_address(address: str) -> None:
    """Where the servers of an address come from (preset, MX, SRV, autoconfig)."""
    cli.show(cli.call("GET", "/v1/discover", params={"address": address}))


@org_app.command("show")
def org_show() -> None:
    cli.show(cli.call("GET", "/v1/org/mail-settings"))


@org_app.command("set")
def org_set(
    domain: list[str] = typer.Option(..., "--domain", help="an address domain (repeat)"),
    incoming: str = typer.Option(..., help="host:port:security"),
    incoming_protocol: str = typer.Option("imap", help="imap, pop3 or ews"),
    outgoing: str | None = typer.Option(None, help="SMTP host:port:security"),
    username_template: str = typer.Option("%EMAILADDRESS%"),
    poll: int | None = typer.Option(None, help="default polling interval (s)"),
    self_service: str = typer.Option("org_domains", help="off, org_domains or any"),
) -> None:
    """Set the organisation's servers: addresses of these domains then need only a password."""
    inc = cli.server(incoming, "incoming") or {}
    body = cli.drop_none(
        {
            "domains": domain,
            "incoming": {**inc, "protocol": incoming_protocol},
            "outgoing": cli.server(outgoing, "outgoing"),
            "username_template": username_template,
            "polling_interval_s": poll,
            "employee_self_service": self_service,
        }
    )
    cli.show(cli.call("PUT", "/v1/org/mail-settings", json=body))


def register(
    app: typer.Typer, accounts_app: typer.Typer, subcommands: dict[str, typer.Typer]
) -> None:
    accounts_app.command("import")(import_accounts)
    accounts_app.command("test")(test_account)
    accounts_app.command("discover")(discover_address)
    app.add_typer(org_app, name="org")
    subcommands["org"] = org_app
