"""Alembic migrations of every service database, driven from code (no alembic.ini).

One environment (``env.py`` and ``script.py.mako`` here) serves every service; a service keeps
its revisions in ``services/<name>/migrations/versions/`` and its version in its own table
``alembic_version_<name>``. :func:`upgrade` is what ``python -m libs.common.migrate`` and every
service's start-up run (``Service.migrate``); services without a versions directory (schemas
still changing) are created with ``create_all``.

After changing a service's tables, add a revision and check it by hand::

    python -m libs.common.migrate revision registry -m "add departments"
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection

log = logging.getLogger("mailroom.migrations")

HERE = Path(__file__).resolve().parent
SERVICES = HERE.parents[2] / "services"
BASELINE_TABLE = "events"  # every service database has it (libs.common.store.tables)


def versions_dir(service: str) -> Path:
    return SERVICES / service / "migrations" / "versions"


def has_migrations(service: str) -> bool:
    d = versions_dir(service)
    return d.is_dir() and any(p.suffix == ".py" and p.stem != "__init__" for p in d.iterdir())


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


def config(service: str, metadata: MetaData, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_locations", str(versions_dir(service)))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes.update(service=service, metadata=metadata, connection=connection)
    return cfg


def _upgrade(conn: Connection, service: str, metadata: MetaData, revision: str) -> None:
    cfg = config(service, metadata, conn)
    found = set(inspect(conn).get_table_names())
    if version_table(service) not in found and BASELINE_TABLE in found:
        # made by create_all before the service had migrations: it is the first revision
        base = ScriptDirectory.from_config(cfg).get_base()
        log.info("%s: database without Alembic version: stamping %s", service, base)
        command.stamp(cfg, base or "head")
    before = MigrationContext.configure(
        conn, opts={"version_table": version_table(service)}
    ).get_current_revision()
    command.upgrade(cfg, revision)
    after = MigrationContext.configure(
        conn, opts={"version_table": version_table(service)}
    ).get_current_revision()
    if before != after:
        log.info("%s: schema migrated %s -> %s", service, before or "(empty)", after)
    missing = sorted(set(metadata.tables) - set(inspect(conn).get_table_names()))
    if missing:
        log.error(
            "%s: tables %s are in the models but in no migration: run "
            "`python -m libs.common.migrate revision %s -m '...'`",
            service,
            ", ".join(missing),
            service,
        )


async def upgrade(engine: Any, service: str, metadata: MetaData, revision: str = "head") -> None:
    """Bring one service database to ``revision`` (an AsyncEngine; one transaction).

    On PostgreSQL, replicas that start together (and the migration Job) take a transaction-level
    advisory lock named after the service first: one migrates, the others then find it done."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.sha256(f"mailroom:{service}".encode()).digest()[:8], "big")
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key - (1 << 63)})
        await conn.run_sync(_upgrade, service, metadata, revision)


def diff(conn: Connection, metadata: MetaData) -> list[Any]:
    """What differs between the database and the models (empty: they match)."""

    def include_name(name: str | None, type_: str, _parent: Any) -> bool:
        return not (type_ == "table" and (name or "").startswith("alembic_version_"))

    opts = {"compare_type": True, "include_name": include_name}
    return list(compare_metadata(MigrationContext.configure(conn, opts=opts), metadata))


def revision(service: str, metadata: MetaData, message: str, rev_id: str | None = None) -> Path:
    """Autogenerate a revision from the models against a scratch SQLite at head."""
    from sqlalchemy import create_engine

    versions_dir(service).mkdir(parents=True, exist_ok=True)
    init = versions_dir(service) / "__init__.py"
    if not init.exists():
        init.write_text("")
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scratch.db")
        try:
            with engine.begin() as conn:
                cfg = config(service, metadata, conn)
                if has_migrations(service):
                    command.upgrade(cfg, "head")
                n = len([p for p in versions_dir(service).glob("*.py") if p.stem != "__init__"])
                script = command.revision(
                    cfg,
                    message=message,
                    autogenerate=True,
                    rev_id=rev_id or f"{service}_{n + 1:04d}",
                )
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    _tidy(Path(script.path))
    return Path(script.path)


def _tidy(path: Path) -> None:
    """ruff (if installed next to this Python): format and lint-fix the new revision."""
    import subprocess
    import sys

    ruff = Path(sys.executable).with_name("ruff")
    if ruff.exists():
        for args in (["check", "--fix", "--unsafe-fixes", "-q"], ["format", "-q"]):
            subprocess.run([str(ruff), *args, str(path)], check=False)  # noqa: S603
