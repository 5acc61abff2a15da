"""Bring every service database to the current schema: ``python -m libs.common.migrate``.

Run by the Kubernetes migration Job and the compose ``migrate`` service before the services start
(the embedded stack does the same at start-up). Each service with Alembic revisions
(``services/<name>/migrations/versions``) is upgraded to ``head``; the others are created if
missing (``create_all``); then the database-level guards (e.g. the audit store's append-only
triggers) are applied.

    python -m libs.common.migrate [SERVICE ...]            upgrade (default: every service)
    python -m libs.common.migrate revision SERVICE -m MSG  autogenerate a revision from the models
    python -m libs.common.migrate check [SERVICE ...]      exit 1 if a fresh database migrated
                                                           with Alembic differs from the models
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys

from sqlalchemy import MetaData

from libs.common import migrations
from libs.common.embedded import available_services
from libs.common.logs import setup_logging
from libs.common.settings import Settings
from libs.common.store.tables import store_tables

log = logging.getLogger("mailroom.migrate")


async def migrate(settings: Settings, services: list[str]) -> None:
    for name in services:
        svc = importlib.import_module(f"services.{name}.app").create_app(settings)
        try:
            await svc.migrate()
            log.info("%s: schema up to date", name)
        finally:
            await svc.db.dispose()


def service_metadata(name: str) -> MetaData:
    """The service's tables with the event store's (events, outbox, inbox)."""
    metadata: MetaData = importlib.import_module(f"services.{name}.tables").metadata
    store_tables(metadata)
    return metadata


async def check(services: list[str]) -> int:
    """Migrate a scratch SQLite per service with Alembic and compare it with the models."""
    import tempfile

    from sqlalchemy.ext.asyncio import create_async_engine

    bad = 0
    for name in services:
        if not migrations.has_migrations(name):
            print(f"{name}: no migrations (create_all)")
            continue
        metadata = service_metadata(name)
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_async_engine(f"sqlite+aiosqlite:///{tmp}/check.db")
            try:
                await migrations.upgrade(engine, name, metadata)
                async with engine.connect() as conn:
                    found = await conn.run_sync(migrations.diff, metadata)
            finally:
                await engine.dispose()
        print(f"{name}: {'matches the models' if not found else found}")
        bad += bool(found)
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    settings = Settings()
    setup_logging(settings.log_level)
    if argv[:1] == ["revision"]:
        parser = argparse.ArgumentParser(prog="python -m libs.common.migrate revision")
        parser.add_argument("service")
        parser.add_argument("-m", "--message", required=True)
        parser.add_argument("--rev-id", default=None)
        args = parser.parse_args(argv[1:])
        path = migrations.revision(
            args.service, service_metadata(args.service), args.message, args.rev_id
        )
        print(f"{path}: check it by hand (types, server defaults, data migrations)")
        return 0
    if argv[:1] == ["check"]:
        return asyncio.run(check(argv[1:] or available_services()))
    services = argv or available_services()
    asyncio.run(migrate(settings, services))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
