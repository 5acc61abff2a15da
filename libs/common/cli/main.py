"""The ``mailroom`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

import httpx
import typer
from rich.console import Console

from libs.common.auth import TokenIssuer, load_or_create_key
from libs.common.settings import Settings

app = typer.Typer(
    help="Mailroom: every mailbox of the organisation in one place.", no_args_is_help=True
)
events_app = typer.Typer(help="Watch the event stream.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens signed with the local key.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(audit_app, name="audit")
app.add_typer(tokens_app, name="tokens")
console = Console(stderr=True)


def _mount_service_clis() -> None:
    """Services may contribute sub-commands (``SUBCOMMANDS`` in ``services.<name>.cli``)."""
    import importlib

    for name in ("registry", "authz", "sync", "sender"):
        try:
            module = importlib.import_module(f"services.{name}.cli")
        except ModuleNotFoundError:
            continue
        for sub_name, sub in getattr(module, "SUBCOMMANDS", {}).items():
            app.add_typer(sub, name=sub_name)


_mount_service_clis()


def _settings() -> Settings:
    return Settings()


@app.command()
def up(
    demo: bool = typer.Option(True, help="Print an admin token for the demo tenant."),
) -> None:
    """Run the whole system in this process (embedded NATS unless MAILROOM_NATS_URL is set)."""
    from libs.common import embedded
    from libs.common.host import serve
    from libs.common.logs import setup_logging

    settings = _settings()
    setup_logging(settings.log_level)
    stack = embedded.build(settings)
    try:
        fastapi_app = stack.host.app()
        names = ", ".join(s.name for s in stack.host.services)
        console.print(f"[bold]Mailroom[/bold] — services: {names}")
        console.print(f"NATS: {stack.nats_url}   data: {settings.data_dir.resolve()}")
        base = f"http://{settings.http_host}:{settings.http_port}"
        console.print(f"API: {base}  (OpenAPI: {base}/docs, health: {base}/healthz)")
        has_console = any(s.name == "console" for s in stack.host.services)
        if has_console:
            after = " (sign in with the link after the token)" if demo else ""
            console.print(f"Admin console: {base}/console/{after}")
        if demo:
            assert stack.host.runtime.issuer is not None
            token = stack.host.runtime.issuer.issue(embedded.DEMO_TENANT, "admin", "admin")
            (settings.data_dir / "demo-token").write_text(token)
            console.print(f"Demo tenant '{embedded.DEMO_TENANT}', admin token:")
            print(token, flush=True)
            if has_console:  # stdout, like the token: never in the logs (stderr)
                print(f"{base}/console/signin#token={token}", flush=True)
        serve(fastapi_app, settings)
    finally:
        if stack.nats is not None:
            stack.nats.stop()


@tokens_app.command("create")
def tokens_create(
    admin: bool = typer.Option(False, "--admin", help="A tenant admin token."),
    employee: str | None = typer.Option(None, "--employee", help="A token for this employee id."),
    service: str | None = typer.Option(None, "--service", help="A service-account token."),
    scope: list[str] = typer.Option([], "--scope", help="Scopes of a service account."),
    tenant: str = typer.Option("demo", "--tenant"),
    ttl: int = typer.Option(12 * 3600, "--ttl", help="Lifetime in seconds."),
) -> None:
    """Issue a token; the token alone is printed on the last line."""
    chosen = [x for x in (admin, employee, service) if x]
    if len(chosen) != 1:
        console.print("[red]choose exactly one of --admin, --employee ID, --service NAME[/red]")
        raise typer.Exit(2)
    settings = _settings()
    issuer = TokenIssuer(load_or_create_key(settings.auth_key_path()))
    if admin:
        token = issuer.issue(tenant, "admin", "admin", ttl_s=ttl)
    elif employee:
        token = issuer.issue(tenant, employee, "employee", ttl_s=ttl)
    else:
        token = issuer.issue(tenant, str(service), "service", ttl_s=ttl, scopes=scope)
    console.print(f"token for tenant {tenant}, valid {ttl}s:")
    print(token)


def api_client() -> httpx.Client:
    """An HTTP client for the API: MAILROOM_API and MAILROOM_TOKEN, else the local demo admin."""
    settings = _settings()
    base = os.environ.get("MAILROOM_API", f"http://{settings.http_host}:{settings.http_port}")
    token = os.environ.get("MAILROOM_TOKEN")
    if not token:
        issuer = TokenIssuer(load_or_create_key(settings.auth_key_path()))
        token = issuer.issue(os.environ.get("MAILROOM_TENANT", "demo"), "admin", "admin", ttl_s=600)
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def fail_on_error(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            err = r.json()["error"]
            console.print(f"[red]{r.status_code} {err['code']}: {err['message']}[/red]")
        except Exception:
            console.print(f"[red]{r.status_code}: {r.text[:500]}[/red]")
        raise typer.Exit(1)
    return r.json()


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the tenant's hash chain; exit 1 and name the first bad entry if it is broken."""
    with api_client() as client:
        result = fail_on_error(client.get("/v1/audit/verify"))
    if result["ok"]:
        console.print(f"[green]audit chain intact[/green]: {result['checked']} entries verified")
        return
    console.print(
        f"[red]audit chain BROKEN[/red] at entry {result['first_bad_tenant_seq']} "
        f"(event {result['first_bad_event_id']}): {result['problem']}"
    )
    raise typer.Exit(1)


@events_app.command("tail")
def events_tail(
    subject: str = typer.Option("mailroom.>", help="Subject filter."),
    tenant: str = typer.Option("", help="Only this tenant's events."),
    event: str = typer.Option("", help="Only events of this name, e.g. AccountAdded."),
    from_start: bool = typer.Option(False, "--from-start", help="Replay the stream first."),
    count: int = typer.Option(0, help="Stop after this many events (0: run until Ctrl-C)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON envelope per line."),
) -> None:
    """Print live events as they are published."""
    from libs.common.embedded import nats_url_file

    if tenant or event:
        subject = _tail_subject(subject, tenant, event)
    settings = _settings()
    url = settings.nats_url
    if not url and nats_url_file(settings).exists():
        url = nats_url_file(settings).read_text().strip()
    if not url:
        console.print("[red]no NATS: set MAILROOM_NATS_URL or run `mailroom up` first[/red]")
        raise typer.Exit(2)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(url, subject, from_start, count, as_json))


def _tail_subject(subject: str, tenant: str, event: str) -> str:
    """``mailroom.<tenant>.*.*.*.<event>`` for ``--tenant`` / ``--event`` (exit 2 on bad input)."""
    from libs.common.subjects import SubjectError, event_subject

    if subject != "mailroom.>":
        console.print("[red]give --subject, or --tenant/--event, not both[/red]")
        raise typer.Exit(2)
    try:  # each given part must be a valid subject token ("x" stands in for the wildcards)
        event_subject(tenant or "x", "x", "x", "x", event or "x")
    except SubjectError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return f"mailroom.{tenant or '*'}.*.*.*.{event or '*'}"


async def _tail(url: str, subject: str, from_start: bool, count: int, as_json: bool) -> None:
    from nats.js.api import DeliverPolicy

    from libs.common.events import Envelope
    from libs.common.nats import connect
    from libs.common.subjects import STREAM

    nc = await connect(url, name="mailroom-cli-tail")
    js = nc.jetstream()
    policy = DeliverPolicy.ALL if from_start else DeliverPolicy.NEW
    sub = await js.subscribe(subject, stream=STREAM, ordered_consumer=True, deliver_policy=policy)
    seen = 0
    try:
        while count == 0 or seen < count:
            msg = await sub.next_msg(timeout=None)
            seen += 1
            try:
                env = Envelope.from_nats(msg.headers, msg.data)
            except Exception:
                print(f"? {msg.subject} (not a valid event)", flush=True)
                continue
            if as_json:
                print(env.model_dump_json(), flush=True)
            else:
                when = env.time.strftime("%H:%M:%S.%f")[:-3]
                print(
                    f"{when} {env.tenant_id:<10} {env.event_name:<22} {env.aggregate}/"
                    f"{env.aggregate_id} v{env.aggregate_version} by {env.actor}",
                    flush=True,
                )
    finally:
        await nc.close()


docs_app = typer.Typer(help="Generated documentation.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")


@docs_app.command("asyncapi")
def docs_asyncapi(
    out: str = typer.Option("", help="Directory to write to (default: the repository's docs/)."),
) -> None:
    """Write the AsyncAPI 3.0 document of every event and RPC subject (docs/asyncapi.json)."""
    from pathlib import Path

    from libs.common import asyncapi

    for path in asyncapi.write(Path(out) if out else asyncapi.DOCS):
        console.print(f"wrote {path}")


projections_app = typer.Typer(help="Service projections.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")


@projections_app.command("rebuild")
def projections_rebuild(
    service: str = typer.Argument(..., help="registry, authz, sync, ..."),
) -> None:
    """Drop a service's projections and rebuild them from the audit store."""
    settings = _settings()
    from libs.common.embedded import nats_url_file

    url = settings.nats_url or (
        nats_url_file(settings).read_text().strip() if nats_url_file(settings).exists() else None
    )
    if not url:
        console.print("[red]no NATS: set MAILROOM_NATS_URL or run `mailroom up` first[/red]")
        raise typer.Exit(2)
    counts = asyncio.run(_rebuild(settings, url, service))
    for durable, n in counts.items():
        console.print(f"{durable}: rebuilt from {n} events")


async def _rebuild(settings: Settings, url: str, service: str) -> dict[str, int]:
    import importlib

    from libs.common.nats import connect
    from libs.common.rebuild import rebuild_from_audit

    svc = importlib.import_module(f"services.{service}.app").create_app(settings)
    await svc.db.create_all()
    nc = await connect(url, name="mailroom-cli-rebuild")
    try:
        return {
            p.durable: await rebuild_from_audit(nc, svc.db, p) for p in svc.projections if p.reset
        }
    finally:
        await nc.close()
        await svc.db.dispose()


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
