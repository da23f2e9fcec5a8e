# Two commands on a fresh machine: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lake store's extensions exist for one DuckDB release: its tests run in a second
# environment with the `lake` extra, and Dagster's Postgres storage for the cluster's
# (docs/scale-out.md).
LAKE_VENV := .venv-lake
LAKE_STAMP := $(LAKE_VENV)/.installed

# `make test` runs the suite (DuckDB 2.x) and, beside it, the lake's own tests (DuckDB 1.5.5):
# writers at once on a lake, S3, housekeeping, migration, two machines, the API's reader.
# `make test-all` (CI) adds the behaviour suites run again on a lake.
LAKE_OWN := tests/store/test_lake_concurrency.py tests/store/test_lake_s3.py tests/cluster \
	tests/defs/test_lake_maintenance.py tests/ops/test_migrate.py tests/api/test_reader.py
LAKE_LOG := .pytest-lake.log

.PHONY: install install-lake postgres run test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(LAKE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(LAKE_VENV)
	$(LAKE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LAKE_VENV)/bin/python -m pip install --quiet -e ".[dev,lake,cluster]"
	touch $(LAKE_STAMP)

install: $(STAMP)

install-lake: $(LAKE_STAMP)

# Debian's Postgres, for the lake's catalog in tests (each test process starts a throwaway
# cluster of its own); installed once if missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

run: install
	$(BIN)/mirror run

lint: install
	$(BIN)/ruff check mirror_assets mirror_api tests bench
	$(BIN)/ruff format --check mirror_assets mirror_api tests bench
	$(BIN)/mypy mirror_assets mirror_api
	$(BIN)/lint-imports

# The two environments' runs at once, the lake's in one process (its tests mostly wait on
# processes of their own); the lake's report follows the suite's.
test: lint install-lake postgres
	@$(LAKE_VENV)/bin/pytest -m lake $(LAKE_OWN) >$(LAKE_LOG) 2>&1 & lake=$$!; \
	$(BIN)/pytest -n 4 -m "not lake"; suite=$$?; \
	wait $$lake; own=$$?; echo "--- the lake's own tests ($(LAKE_VENV)):"; cat $(LAKE_LOG); \
	test $$suite -eq 0 && test $$own -eq 0

test-all: test
	$(LAKE_VENV)/bin/pytest -n 3 -m lake $(addprefix --ignore=,$(LAKE_OWN))

bench: install
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.backfill

clean:
	rm -rf $(VENV) $(LAKE_VENV) .mypy_cache .ruff_cache .pytest_cache $(LAKE_LOG)
