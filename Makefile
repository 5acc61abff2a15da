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

bench: install
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .mailroom .mypy_cache .ruff_cache .pytest_cache
