"""The admin console: a backend-for-frontend at ``/console/`` that owns no data.

Server-rendered pages (Jinja2) with htmx for the small live parts. Every page is drawn from the
other services' public HTTP APIs, called with the signed-in user's own token
(``services.console.client``): what a user may not do is not offered, and the services refuse it
anyway. In the embedded stack the APIs are this same host; apart, ``MAILROOM_CONSOLE_*_URL``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi import APIRouter, Request, Response

from libs.common.service import Runtime, Service
from libs.common.settings import Settings
from libs.common.store.database import Database
from services.console.client import Backends
from services.console.pages_accounts import build_accounts_router
from services.console.pages_add import build_add_router
from services.console.pages_audit import build_audit_router
from services.console.pages_auth import build_auth_router
from services.console.pages_import import build_import_router
from services.console.pages_mailbox import build_mailbox_router
from services.console.pages_people import build_people_router
from services.console.settings import ConsoleSettings
from services.console.web import Console, route_class

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "signature-editor.js": "text/javascript; charset=utf-8",
    "signature-editor.css": "text/css; charset=utf-8",
}


@dataclass
class ConsoleService(Service):
    """A service without a database of its own (nothing to migrate, nothing to check)."""

    console: Console | None = field(default=None)

    async def migrate(self) -> None:
        return None

    async def ready(self) -> bool:
        return self.console is not None and self.console.verifier is not None


def local_api(settings: Settings) -> str:
    """This host's own HTTP server, as the console reaches it (``0.0.0.0`` → loopback)."""
    host = settings.http_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - the address we listen on, not bind to
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def build_static_router(console: Console) -> APIRouter:
    r = APIRouter(prefix="/console", include_in_schema=False, route_class=route_class(console))
    files = {name: (STATIC / name).read_bytes() for name in STATIC_TYPES}

    @r.get("/static/{name}")
    async def static(request: Request, name: str) -> Response:
        body = files.get(name)
        if body is None:
            return console.error(request, 404, "Not found", "No such file.")
        return Response(
            body,
            media_type=STATIC_TYPES[name],
            headers={"Cache-Control": "public, max-age=3600"},
        )

    @r.get("/{rest:path}")
    async def not_found(request: Request, rest: str) -> Response:
        return console.error(request, 404, "Not found", "There is no such page in the console.")

    return r


def create_app(
    settings: Settings,
    *,
    console_settings: ConsoleSettings | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ConsoleService:
    cs = console_settings or ConsoleSettings()
    backends = Backends(cs, local_api(settings), transport)
    console = Console(cs, backends)
    svc = ConsoleService(
        name="console",
        db=Database("sqlite+aiosqlite:///:memory:"),
        settings=settings,
        routers=[
            build_auth_router(console),
            build_accounts_router(console),
            build_add_router(console),
            build_mailbox_router(console),
            build_people_router(console),
            build_import_router(console),
            build_audit_router(console),
            build_static_router(console),  # last: its catch-all answers unknown pages
        ],
        writes_events=False,
        console=console,
    )

    async def start(_: Service, runtime: Runtime) -> None:
        console.verifier = runtime.verifier

    async def stop(_: Service, __: Runtime) -> None:
        await backends.close()

    svc.on_start.append(start)
    svc.on_stop.append(stop)
    return svc
