"""Run the sync service alone: ``python -m services.sync``."""

from libs.common.run import run_one

run_one("sync")
