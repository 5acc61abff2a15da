"""Bring every service database to the current schema: ``python -m libs.common.migrate``.

Run by the Kubernetes migration Job and the compose ``migrate`` service before the services start
(the embedded stack does the same at start-up). Each service's schema is created if missing,
with its database-level guards (e.g. the audit store's append-only triggers).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys

from libs.common.embedded import available_services
from libs.common.logs import setup_logging
from libs.common.settings import Settings

log = logging.getLogger("mailroom.migrate")


async def migrate(settings: Settings, services: list[str]) -> None:
    for name in services:
        svc = importlib.import_module(f"services.{name}.app").create_app(settings)
        try:
            await svc.migrate()
            log.info("%s: schema up to date", name)
        finally:
            await svc.db.dispose()


def main(argv: list[str]) -> int:
    settings = Settings()
    setup_logging(settings.log_level)
    services = argv or available_services()
    asyncio.run(migrate(settings, services))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
