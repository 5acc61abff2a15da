# Mailroom — the two commands for a fresh machine are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install deps lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## Runs the whole system: embedded NATS, all five services, SQLite in .mailroom/, demo tenant.
run: install
	$(VENV)/bin/mailroom up

## Debian packages the real-server tests need (Dovecot); installs them when missing.
deps:
	@bash .ci/install-debian-deps.sh

## The full test suite (PostgreSQL tests run when MAILROOM_TEST_PG_URL is set).
test: install deps
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check libs services tests bench
	$(VENV)/bin/ruff format --check libs services tests bench

typecheck: install
	$(VENV)/bin/mypy

# Every benchmark, each with its raw baseline in the same run (bench/sync.py at its default
# 1,000 accounts; the README's 10,000-account figure: `bench/sync.py --accounts 10000`).
BENCHES = pipeline authz sender sync import offboarding
bench: install
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .mailroom .mypy_cache .ruff_cache .pytest_cache
