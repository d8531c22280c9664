# Set-up and everyday commands. `make demo` and `make test` each create the environment
# (.venv, torch pinned to 2.13.0: the CPU build where one is provided) when missing, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test lint typecheck unit env browser weights clean

$(BIN)/dyve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

env: $(BIN)/dyve browser

# Headless Chromium for the report's browser test (Debian packages; best effort: without
# root or apt the test skips and says why).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; } ; } || \
	  echo "note: Chromium could not be installed; the report's browser test will be skipped"

demo: $(BIN)/dyve
	$(BIN)/dyve demo

test: env lint typecheck unit

lint: env
	$(BIN)/ruff check src tests scripts benchmarks examples
	$(BIN)/ruff format --check src tests scripts benchmarks examples

typecheck: env
	$(BIN)/mypy

unit: env
	$(BIN)/pytest

# Re-train the shipped weights (hours on a CPU; resumes unfinished runs).
weights: env
	$(BIN)/dyve data prepare cifar10-jpeg --source ../shared/data
	PATH=$(BIN):$$PATH bash scripts/train_zoo.sh runs/zoo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
