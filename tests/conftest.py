"""Shared fixtures; the real-server ones live in tests/support."""

pytest_plugins = ["tests.support.infra", "tests.support.stack"]
