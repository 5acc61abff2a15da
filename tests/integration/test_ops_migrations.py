"""Alembic: a fresh SQLite and a fresh PostgreSQL migrated to head match the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from libs.common import migrations
from libs.common.migrate import service_metadata
from libs.common.service import Service
from libs.common.settings import Settings
from libs.common.store.database import Database

MIGRATED = ("registry", "authz", "sync", "sender", "audit")


def test_every_migrated_service_has_revisions_in_its_package() -> None:
    for name in MIGRATED:
        assert migrations.has_migrations(name), name
        assert migrations.versions_dir(name).is_relative_to(migrations.SERVICES / name)


async def _check(engine: AsyncEngine, name: str) -> None:
    metadata = service_metadata(name)
    await migrations.upgrade(engine, name, metadata)
    await migrations.upgrade(engine, name, metadata)  # idempotent
    async with engine.connect() as conn:
        found = await conn.run_sync(migrations.diff, metadata)
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert found == [], f"{name}: models and migrations differ: {found}"
    assert f"alembic_version_{name}" in tables


@pytest.mark.parametrize("name", MIGRATED)
async def test_fresh_sqlite_migrated_matches_the_models(tmp_path: Path, name: str) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    try:
        await _check(engine, name)
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.connected
async def test_fresh_postgres_migrated_matches_the_models(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    try:
        for name in MIGRATED:  # one database, one version table per service
            async with engine.begin() as conn:
                await conn.execute(text(f'CREATE SCHEMA "{name}"'))
            await _check_in_schema(engine, name)
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.connected
async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    """Three replicas (and the migration Job) may start at the same moment on one database:
    the advisory lock lets one migrate; the others wait and find the schema at head."""
    import asyncio

    engines = [create_async_engine(pg_url) for _ in range(3)]
    try:
        metadata = service_metadata("sync")
        together = asyncio.gather(*(migrations.upgrade(e, "sync", metadata) for e in engines))
        await asyncio.wait_for(together, 60)  # without the lock they deadlock or fail
        async with engines[0].connect() as conn:
            found = await conn.run_sync(migrations.diff, metadata)
            versions = (await conn.execute(text("SELECT * FROM alembic_version_sync"))).all()
        assert found == [] and len(versions) == 1
    finally:
        for e in engines:
            await e.dispose()


async def _check_in_schema(engine: AsyncEngine, name: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f'SET search_path TO "{name}"'))
        metadata = service_metadata(name)
        await conn.run_sync(migrations._upgrade, name, metadata, "head")
        found = await conn.run_sync(migrations.diff, metadata)
    assert found == [], f"{name}: models and migrations differ on PostgreSQL: {found}"


async def test_a_database_made_before_alembic_is_adopted(tmp_path: Path) -> None:
    """create_all (how services made their schema before) then Service.migrate: stamped, kept."""
    settings = Settings(data_dir=tmp_path)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}", service_metadata("audit"))
    await db.create_all()
    async with db.write() as conn:
        await conn.execute(text("INSERT INTO audit_heads VALUES ('t', 1, x'00')"))
    svc = Service(name="audit", db=db, settings=settings, writes_events=False)
    try:
        await svc.migrate()
        async with db.read() as conn:
            version = (await conn.execute(text("SELECT * FROM alembic_version_audit"))).all()
            heads = (await conn.execute(text("SELECT count(*) FROM audit_heads"))).scalar()
            found = await conn.run_sync(migrations.diff, db.metadata)
    finally:
        await db.dispose()
    assert version == [("audit_0002_page_indexes",)] and heads == 1 and found == []
