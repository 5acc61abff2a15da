"""Run the audit service alone: ``python -m services.audit``."""

from libs.common.run import run_one

run_one("audit")
