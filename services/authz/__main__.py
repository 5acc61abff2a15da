"""Run the authz service alone: ``python -m services.authz``."""

from libs.common.run import run_one

run_one("authz")
