"""Every benchmark under bench/ still runs: tiny sizes, a readable table, then with ``--json``
one JSON object of its figures as the last line (the README's figures come from these scripts).

Each script starts its own real parts (nats-server from the wheel, Dovecot, aiosmtpd), as
``make bench`` runs them; the figures of such tiny runs mean nothing and are not checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.infra import PG_URL_ENV, unavailable

pytestmark = [pytest.mark.connected, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "pipeline": (
        ["--events", "300", "--rate", "200", "--seconds", "0.5"],
        ["mailroom_e2e_events_per_s", "raw_events_per_s", "ratio", "loop_cpu_us_per_event"],
    ),
    "authz": (
        ["--mailboxes", "40", "--employees", "20", "--checks", "2000", "--rpc", "200"],
        ["in_process", "nats", "raw_nats", "targets_met"],
    ),
    "sender": (
        ["--messages", "20", "--rounds", "1"],
        ["mailroom_messages_per_s", "raw_messages_per_s", "ratio"],
    ),
    "sync": (
        [
            "--accounts",
            "10",
            "--window",
            "1",
            "--idle",
            "3",
            "--deliveries",
            "2",
            "--raw-logins",
            "10",
        ],
        ["accounts", "raw_aioimaplib_login_select_per_s", "idle_latency_ms_p99"],
    ),
    "import": (["--rows", "20", "--big", "100", "--tested", "10"], ["import_1k", "import_10k"]),
    "offboarding": (["--runs", "2", "--rtt", "100"], ["effects", "raw_nats_request_reply"]),
}


def test_every_bench_script_is_covered() -> None:
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"sender_parts"}  # a module
    assert scripts == set(TINY)
    makefile = (ROOT / "Makefile").read_text()
    assert all(name in makefile.split("BENCHES =")[1].splitlines()[0] for name in TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bench_prints_a_table_then_one_json_object(name: str, tmp_path: Path) -> None:
    args, keys = TINY[name]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert isinstance(figures, dict)
    assert [k for k in keys if k not in figures] == []
    table = lines[:-1]
    assert len(table) >= 3, done.stdout  # a header and rows before the JSON line


@pytest.mark.parametrize("name", ["pipeline", "import"])
def test_bench_on_postgres(name: str, tmp_path: Path) -> None:
    """``--postgres``: the services on fresh PostgreSQL databases, dropped afterwards."""
    base = os.environ.get(PG_URL_ENV)
    if not base:
        unavailable(f"the PostgreSQL benches need {PG_URL_ENV}")
    assert base is not None
    args, keys = TINY[name]
    only = ["--only", "import_1k,import_10k"] if name == "import" else []
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args, *only, "--postgres", base,
         "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["database"] == "postgresql"
    assert [k for k in keys if k not in figures] == []
