"""Run the console alone: ``python -m services.console`` (no NATS, no database)."""

from libs.common.host import serve
from libs.common.logs import setup_logging
from libs.common.settings import Settings
from services.console.standalone import standalone_app

settings = Settings()
setup_logging(settings.log_level)
serve(standalone_app(settings), settings)
