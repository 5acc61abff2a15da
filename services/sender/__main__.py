"""Run the sender service alone: ``python -m services.sender``."""

from libs.common.run import run_one

run_one("sender")
