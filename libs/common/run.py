"""Entry point for ``python -m services.<name>``: one service, as a pod runs it."""

from __future__ import annotations

import importlib

from libs.common.host import Host, serve
from libs.common.logs import setup_logging
from libs.common.settings import Settings


def run_one(name: str) -> None:
    settings = Settings()
    setup_logging(settings.log_level)
    if not settings.nats_url:
        raise SystemExit("MAILROOM_NATS_URL must be set to run one service alone")
    module = importlib.import_module(f"services.{name}.app")
    host = Host([module.create_app(settings)], settings, settings.nats_url)
    serve(host.app(), settings)
