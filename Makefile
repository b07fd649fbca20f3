# One-command set-up, tests, lint and demo. Every target is safe to run again.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed
# e.g. make bench BENCH_ARGS='--size tiny --only latency,burst'
BENCH_ARGS ?=

.PHONY: setup test test-fast lint demo devnet bench chaos compile clean

setup: $(STAMP_PY) $(STAMP_NPM)

$(STAMP_PY): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: setup
	$(BIN)/python -m pytest -q

# Pure and unit tests only (no anvil, no `dloop` or other process, no server): everything not marked `slow`.
# tests/support/no_processes.py fails a test of this selection that starts one anyway (mark it `slow`).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -p tests.support.no_processes

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/deptry .

compile: $(STAMP_NPM)
	node devtools/contracts/compile.mjs

devnet: setup
	$(BIN)/dloop devnet

demo: setup
	$(BIN)/dloop demo

bench: setup
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# The chaos and bad-input suite at full size (docs/reliability.md); the figures land in $(CHAOS_REPORT).
CHAOS_REPORT ?= /tmp/dloop-chaos-report.txt
chaos: setup
	rm -f $(CHAOS_REPORT)
	DLOOP_CHAOS_SCALE=full DLOOP_CHAOS_REPORT=$(CHAOS_REPORT) $(BIN)/python -m pytest -q -s -rxX --timeout=3600 \
		$(wildcard tests/test_chaos*.py tests/test_bad_input*.py tests/test_security*.py)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
