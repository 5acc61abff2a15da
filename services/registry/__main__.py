"""Run the registry service alone: ``python -m services.registry``."""

from libs.common.run import run_one

run_one("registry")
