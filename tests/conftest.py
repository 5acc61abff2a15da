"""Shared fixtures; the real-server ones live in tests/support."""

from tests.support.infra import nats_server, pg_url  # noqa: F401
