"""The embedded stack: a nats-server of our own, all five services and the console in one process,
SQLite files.

With ``MAILROOM_NATS_URL`` set it uses that NATS instead of starting one; with database URLs
set (``MAILROOM_DATABASE_URL`` with ``{service}``, or per service) it uses those.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from libs.common.host import Host
from libs.common.natsserver import NatsServer
from libs.common.settings import Settings

SERVICES = ("registry", "authz", "sync", "sender", "audit")
FRONTENDS = ("console",)
"""Services without a database of their own (nothing to migrate): the admin console."""
DEMO_TENANT = "demo"
log = logging.getLogger("mailroom.embedded")


@dataclass
class Embedded:
    settings: Settings
    host: Host
    nats: NatsServer | None

    @property
    def nats_url(self) -> str:
        return self.host.nats_url


def available_services(names: tuple[str, ...] = SERVICES) -> list[str]:
    found = []
    for name in names:
        try:
            module = importlib.import_module(f"services.{name}.app")
        except ModuleNotFoundError:
            continue
        if hasattr(module, "create_app"):
            found.append(name)
    return found


def nats_url_file(settings: Settings) -> Path:
    return settings.data_dir / "nats.url"


def build(settings: Settings) -> Embedded:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    nats: NatsServer | None = None
    url = settings.nats_url
    if not url:
        nats = NatsServer(settings.data_dir / "nats")
        nats.start()
        url = nats.url
    nats_url_file(settings).write_text(url)
    services = [
        importlib.import_module(f"services.{name}.app").create_app(settings)
        for name in [*available_services(), *available_services(FRONTENDS)]
    ]
    return Embedded(settings, Host(services, settings, url), nats)
