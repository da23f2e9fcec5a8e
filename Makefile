# Two commands on a fresh machine: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/mirror run

lint: install
	$(BIN)/ruff check mirror_assets mirror_api tests bench
	$(BIN)/ruff format --check mirror_assets mirror_api tests bench
	$(BIN)/mypy mirror_assets mirror_api
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -n 2

bench: install
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.backfill

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
