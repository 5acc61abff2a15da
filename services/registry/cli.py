"""``mailroom accounts|employees|keys``: the registry from the command line, over the HTTP API.

The API is ``MAILROOM_API`` (default http://127.0.0.1:8080) with the token in ``MAILROOM_TOKEN``
(see ``mailroom tokens create``). Passwords are read from a hidden prompt or ``--password-stdin``,
never from an argument (it would land in the shell history and ``ps``), and never printed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Mailbox accounts, the employee directory and credential keys.", no_args_is_help=True
)
accounts_app = typer.Typer(help="Mailbox accounts.", no_args_is_help=True)
employees_app = typer.Typer(help="The employee directory and departments.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Key-encryption keys (KEKs) of stored credentials.", no_args_is_help=True
)
app.add_typer(accounts_app, name="accounts")
app.add_typer(employees_app, name="employees")
app.add_typer(keys_app, name="keys")
#: Mounted by ``libs.common.cli.main`` as ``mailroom accounts|employees|keys``.
SUBCOMMANDS = {"accounts": accounts_app, "employees": employees_app, "keys": keys_app}

err = Console(stderr=True)


def say(text: str) -> None:
    Console().print(text)  # made per call: it reads COLUMNS and the terminal at that time


def _default_client() -> httpx.Client:
    base = os.environ.get("MAILROOM_API", "http://127.0.0.1:8080")
    token = os.environ.get("MAILROOM_TOKEN")
    if token:
        return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    from libs.common.cli.main import api_client  # the local demo admin, like `mailroom` does

    return api_client()


make_client: Callable[[], httpx.Client] = _default_client


def call(method: str, url: str, **kw: Any) -> Any:
    with make_client() as client:
        try:
            r = client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach the API: {type(exc).__name__}[/red]")
            raise typer.Exit(1) from None
    if r.status_code >= 400:
        try:
            e = r.json()["error"]
            err.print(f"[red]{r.status_code} {e['code']}: {e['message']}[/red]")
        except (ValueError, KeyError, TypeError):
            err.print(f"[red]{r.status_code}: {r.text[:300]}[/red]")
        raise typer.Exit(1)
    return r.json()


def show(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    t = Table()
    for c in columns:
        t.add_column(c, overflow="fold")  # ids are copied from here: never cut them
    for row in rows:
        t.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(t)


def server(value: str | None, what: str) -> dict[str, Any] | None:
    """``host:port:security`` (security ssl, starttls or none)."""
    if value is None:
        return None
    host, _, rest = value.rpartition(":")
    if ":" in host:
        host, _, port = host.rpartition(":")
        security = rest
    else:
        host, port, security = host, rest, None
    if not host or not port.isdigit():
        err.print(f"[red]--{what} must be host:port:security, e.g. imap.example.com:993:ssl[/red]")
        raise typer.Exit(2)
    return {"host": host, "port": int(port), "security": security}


def read_password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True))


def drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


ACCOUNT_COLUMNS = ["id", "address", "protocol", "status", "ownership", "owner_id", "has_credential"]


# --- accounts ---------------------------------------------------------------------------------
@accounts_app.command("list")
def accounts_list(
    status: str | None = typer.Option(None, help="active or disabled"),
    owner: str | None = typer.Option(None, help="owner employee id"),
    ownership: str | None = typer.Option(None, help="personal or shared"),
    protocol: str | None = typer.Option(None),
    q: str | None = typer.Option(None, "--q", "-q", help="search address or name"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """All accounts (every page)."""
    params = drop_none(
        {
            "status": status,
            "owner": owner,
            "ownership": ownership,
            "protocol": protocol,
            "q": q,
            "limit": 500,
        }
    )
    items: list[dict[str, Any]] = []
    while True:
        page = call("GET", "/v1/accounts", params=params)
        items += page["items"]
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    show(items) if as_json else table(items, ACCOUNT_COLUMNS)


@accounts_app.command("show")
def accounts_show(account_id: str) -> None:
    show(call("GET", f"/v1/accounts/{account_id}"))


@accounts_app.command("add")
def accounts_add(
    address: str,
    protocol: str | None = typer.Option(
        None, help="imap, pop3, exchange, office365, gmail, custom (default: the preset's)"
    ),
    preset: str | None = typer.Option(None, help="provider preset id (GET /v1/presets)"),
    display_name: str | None = typer.Option(None),
    incoming: str | None = typer.Option(None, help="host:port:security"),
    outgoing: str | None = typer.Option(None, help="SMTP host:port:security"),
    ews_url: str | None = typer.Option(None, help="Exchange EWS URL"),
    username: str | None = typer.Option(None),
    auth_mode: str | None = typer.Option(None, help="password, app_password or oauth2"),
    owner: str | None = typer.Option(None, help="owner employee id"),
    shared: bool = typer.Option(False, "--shared", help="a shared mailbox"),
    allow_insecure: bool = typer.Option(
        False, "--allow-insecure", help="accept security none (clear text)"
    ),
    forward: list[str] = typer.Option([], "--forward", help="forwarding address (repeat)"),
    bcc: list[str] = typer.Option([], "--bcc", help="auto-BCC address (repeat)"),
    poll: int | None = typer.Option(None, help="polling interval in seconds"),
    daily_limit: int | None = typer.Option(None, help="daily sending limit"),
    no_password: bool = typer.Option(False, "--no-password", help="add without a credential"),
    password_stdin: bool = typer.Option(False, "--password-stdin"),
    idempotency_key: str | None = typer.Option(None),
) -> None:
    """Add an account; the password is asked for (hidden) unless --no-password."""
    inc = server(incoming, "incoming")
    if ews_url:
        inc = {**(inc or {}), "protocol": "ews", "url": ews_url}
    body = drop_none(
        {
            "address": address,
            "protocol": protocol,
            "preset_id": preset,
            "display_name": display_name,
            "incoming": inc,
            "outgoing": server(outgoing, "outgoing"),
            "username": username,
            "auth_mode": auth_mode,
            "owner_id": owner,
            "ownership": "shared" if shared else None,
            "allow_insecure": allow_insecure or None,
            "forwarding": forward or None,
            "auto_bcc": bcc or None,
            "polling_interval_s": poll,
            "daily_send_limit": daily_limit,
        }
    )
    if not no_password:
        body["password"] = read_password(password_stdin)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    show(call("POST", "/v1/accounts", json=body, headers=headers))


@accounts_app.command("update")
def accounts_update(
    account_id: str,
    display_name: str | None = typer.Option(None),
    incoming: str | None = typer.Option(None, help="host:port:security"),
    outgoing: str | None = typer.Option(None, help="host:port:security"),
    username: str | None = typer.Option(None),
    owner: str | None = typer.Option(None),
    ownership: str | None = typer.Option(None, help="personal or shared"),
    allow_insecure: bool | None = typer.Option(None, "--allow-insecure/--no-allow-insecure"),
    forward: list[str] = typer.Option([], "--forward", help="replaces the forwarding list"),
    clear_forwarding: bool = typer.Option(False, "--clear-forwarding"),
    poll: int | None = typer.Option(None),
    daily_limit: int | None = typer.Option(None),
) -> None:
    """Change settings (only the options given)."""
    body = drop_none(
        {
            "display_name": display_name,
            "incoming": server(incoming, "incoming"),
            "outgoing": server(outgoing, "outgoing"),
            "username": username,
            "owner_id": owner,
            "ownership": ownership,
            "allow_insecure": allow_insecure,
            "forwarding": [] if clear_forwarding else (forward or None),
            "polling_interval_s": poll,
            "daily_send_limit": daily_limit,
        }
    )
    show(call("PATCH", f"/v1/accounts/{account_id}", json=body))


@accounts_app.command("set-password")
def accounts_set_password(
    account_id: str, password_stdin: bool = typer.Option(False, "--password-stdin")
) -> None:
    """Replace the stored password or token."""
    doc = call(
        "PUT",
        f"/v1/accounts/{account_id}/credential",
        json={"password": read_password(password_stdin)},
    )
    say(f"credential version {doc['credential_version']} stored")


@accounts_app.command("disable")
def accounts_disable(account_id: str, reason: str = typer.Option("", help="why")) -> None:
    doc = call("POST", f"/v1/accounts/{account_id}/disable", json={"reason": reason})
    say(f"{doc['address']}: {doc['status']}")


@accounts_app.command("reactivate")
def accounts_reactivate(account_id: str) -> None:
    doc = call("POST", f"/v1/accounts/{account_id}/reactivate")
    say(f"{doc['address']}: {doc['status']}")


@accounts_app.command("delete")
def accounts_delete(
    account_id: str, yes: bool = typer.Option(False, "--yes", help="no confirmation")
) -> None:
    """Delete for good: the stored credential is destroyed."""
    if not yes:
        typer.confirm(f"Delete account {account_id} and destroy its credential?", abort=True)
    doc = call("DELETE", f"/v1/accounts/{account_id}")
    say(f"{doc['address']}: deleted, credential shredded")


# --- employees --------------------------------------------------------------------------------
EMPLOYEE_COLUMNS = ["id", "name", "email", "title", "department", "status"]


@employees_app.command("list")
def employees_list(
    status: str | None = typer.Option(None, help="active or offboarded"),
    department: str | None = typer.Option(None),
    q: str | None = typer.Option(None, "--q", "-q"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    params = drop_none({"status": status, "department": department, "q": q, "limit": 500})
    items: list[dict[str, Any]] = []
    while True:
        page = call("GET", "/v1/employees", params=params)
        items += page["items"]
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    show(items) if as_json else table(items, EMPLOYEE_COLUMNS)


@employees_app.command("show")
def employees_show(employee_id: str) -> None:
    show(call("GET", f"/v1/employees/{employee_id}"))


@employees_app.command("add")
def employees_add(
    name: str,
    email: str,
    title: str = typer.Option(""),
    department: str | None = typer.Option(None),
) -> None:
    show(
        call(
            "POST",
            "/v1/employees",
            json={"name": name, "email": email, "title": title, "department": department},
        )
    )


@employees_app.command("update")
def employees_update(
    employee_id: str,
    name: str | None = typer.Option(None),
    email: str | None = typer.Option(None),
    title: str | None = typer.Option(None),
    department: str | None = typer.Option(None),
    no_department: bool = typer.Option(False, "--no-department"),
) -> None:
    body = drop_none({"name": name, "email": email, "title": title, "department": department})
    if no_department:
        body["department"] = None
    show(call("PATCH", f"/v1/employees/{employee_id}", json=body))


@employees_app.command("offboard")
def employees_offboard(
    employee_id: str, successor: str | None = typer.Option(None, help="successor employee id")
) -> None:
    body = drop_none({"status": "offboarded", "successor_id": successor})
    doc = call("PATCH", f"/v1/employees/{employee_id}", json=body)
    say(f"{doc['name']}: {doc['status']}")


@employees_app.command("reinstate")
def employees_reinstate(employee_id: str) -> None:
    doc = call("PATCH", f"/v1/employees/{employee_id}", json={"status": "active"})
    say(f"{doc['name']}: {doc['status']}")


@employees_app.command("departments")
def employees_departments(as_json: bool = typer.Option(False, "--json")) -> None:
    items = call("GET", "/v1/departments")["items"]
    if as_json:
        show(items)
        return
    table(
        [
            {
                "name": d["name"],
                "members": d["member_count"],
                "people": ", ".join(m["name"] for m in d["members"]),
            }
            for d in items
        ],
        ["name", "members", "people"],
    )


# --- keys -------------------------------------------------------------------------------------
@keys_app.command("status")
def keys_status() -> None:
    show(call("GET", "/v1/admin/keys"))


@keys_app.command("rotate")
def keys_rotate(
    generate: bool | None = typer.Option(
        None,
        "--generate/--no-generate",
        help="add a new KEK version first (default: yes for the embedded key file; a mounted "
        "key secret is only re-read)",
    ),
) -> None:
    """Re-wrap every credential under the active KEK (no plaintext is decrypted)."""
    doc = call("POST", "/v1/admin/keys/rotate", json={"generate": generate})
    say(
        f"active KEK version {doc['active_version']}: {doc['rewrapped']} credential(s) "
        f"re-wrapped, {len(doc['failed'])} failed; in use: {doc['blobs_by_version']}"
    )
    if doc["failed"]:
        raise typer.Exit(1)


@keys_app.command("retire")
def keys_retire(version: int) -> None:
    """Drop a KEK version once no credential uses it."""
    doc = call("POST", "/v1/admin/keys/retire", json={"version": version})
    say(doc["message"])


from services.registry import cli_bulk  # noqa: E402  (it builds on the helpers above)

cli_bulk.register(app, accounts_app, SUBCOMMANDS)
