"""Every service's OpenAPI schema, fuzzed with schemathesis against the running embedded stack:
no 5xx, and every response matches the schema (including our error bodies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.embedded import Up

pytestmark = [pytest.mark.e2e, pytest.mark.connected]


def test_no_server_errors_and_responses_match_the_schema(up: Up) -> None:
    up.start()
    st = Path(sys.executable).with_name("st")
    out = subprocess.run(
        [
            str(st), "run", f"{up.base}/openapi.json",
            "-H", f"Authorization: Bearer {up.token}",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "8",
            "--seed", "1",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = out.stdout[-6000:]
    assert out.returncode == 0, report
    assert "Tested:" in report
    up.stop()
