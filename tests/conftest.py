"""Shared fixtures; the real-server ones live in tests/support."""

pytest_plugins = [
    "tests.support.tlsca",
    "tests.support.infra",
    "tests.support.stack",
    "tests.support.embedded",
    "tests.support.dovecot",
    "tests.support.smtpd",
]
