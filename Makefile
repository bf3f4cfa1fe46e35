# whatsapp-bridge: `make run` starts a development bridge, `make test` runs the test suite.
# Both set everything up from scratch (virtualenv, packages) on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench clean install-systemd

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Start the bridge on 127.0.0.1:8080 with a development profile (no account, no network).
run: $(STAMP)
	$(BIN)/bridge serve --dev

## Run the whole test suite (real servers on 127.0.0.1, real files); installs Debian's chromium
## for the console's browser test and Debian's postgresql for the PostgreSQL store's tests when
## missing (those tests are skipped, saying why, if it can't be). Debian keeps initdb under
## /usr/lib/postgresql/<version>/bin, off PATH: the tests look there (tests/pg.py).
test: $(STAMP)
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed: the console test will be skipped"
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq postgresql; } \
		|| echo "postgresql could not be installed: the PostgreSQL store's tests will be skipped"
	$(BIN)/pytest -q

## Benchmarks (results as markdown tables in var/bench/, ~12 min, ~3 GB RAM); installs wrk if missing,
## and pywa in its own venv (var/bench/pywa-venv) for the webhook benchmark's peer column.
bench: $(STAMP)
	command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m tests.bench.webhook_load --out var/bench/webhook.md
	$(BIN)/python -m tests.bench.core_cost --out var/bench/core-cost.md
	$(BIN)/python -m tests.bench.snapshot_stall --out var/bench/snapshot.md
	$(BIN)/python -m tests.bench.load_during_snapshot --out var/bench/load-during-snapshot.md
	$(BIN)/python -m tests.bench.crash_loop --out var/bench/crash.md
	$(BIN)/python -m tests.bench.bursts --out var/bench/bursts.md
	$(BIN)/python -m tests.bench.graph_client --out var/bench/graph-client.md
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| { apt-get update -qq && apt-get install -y -qq postgresql; }
	$(BIN)/python -m tests.bench.replicas --out var/bench/replicas.md
	$(BIN)/python -m tests.bench.replica_crashes --out var/bench/replica-crashes.md
	$(BIN)/python -m tests.bench.replica_crashes --database --out var/bench/replica-db-crashes.md

## ruff (lint + format check) and mypy --strict over code and tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

SYSTEMD_DIR ?= /etc/systemd/system

## Copy the systemd units (as root); daemon-reload only when systemd is running.
install-systemd:
	install -d $(DESTDIR)$(SYSTEMD_DIR)
	install -m 0644 systemd/whatsapp-bridge.service systemd/whatsapp-bridge@.service \
		systemd/whatsapp-bridge.socket systemd/whatsapp-bridge@.socket \
		systemd/whatsapp-bridge-backup@.service systemd/whatsapp-bridge-backup@.timer \
		$(DESTDIR)$(SYSTEMD_DIR)/
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemctl daemon-reload; \
	else \
		echo "systemd is not running here: skipped systemctl daemon-reload"; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
