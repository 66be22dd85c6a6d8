# Cybernetic Edge: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= auto

.PHONY: demo test check lint typecheck imports services venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/ensure-system.sh
	bash scripts/ensure-system.sh python
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

services:
	bash scripts/ensure-system.sh services

demo: venv services
	$(BIN)/cybernetic demo

test: venv services
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --maxprocesses=4 -p no:cacheprovider

check: lint typecheck imports

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

.PHONY: deb
deb: venv
	bash packaging/deb/build.sh
