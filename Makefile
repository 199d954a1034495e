# Gauntlet: two commands set everything up.  `make run`  |  `make test`
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# Writable caches even when the checkout is read-only (CI); override freely.
export GAUNTLET_CACHE_DIR ?= $(HOME)/.cache/gauntlet
export NUMBA_CACHE_DIR    ?= $(GAUNTLET_CACHE_DIR)/numba
export WANDB_MODE         ?= offline

.PHONY: run test test-fast lint install checkpoints bench-corruptions bench-attacks parity clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from the local wheel cache (never the 3 GB download); the rest resolves against it.
	$(PY) -m pip install --quiet "torch>=2.4,<=2.14.1"
	$(PY) -m pip install --quiet -e ".[dev,serve]"
	$(PY) -m pip check
	@touch $(STAMP)

install: $(STAMP)

## Run the default sweep on the embedded digits data and checkpoints, then write its HTML report.
RUN_OUT_DIR = $(or $(patsubst out_dir=%,%,$(filter out_dir=%,$(ARGS))),runs/default)
run: $(STAMP)
	$(VENV)/bin/gauntlet $(ARGS)
	$(VENV)/bin/gauntlet report $(RUN_OUT_DIR)

## The whole test suite (CPU; GPU tests skip themselves without CUDA).
## One torch/OpenMP thread per process unless set: on the tests' small batches a second thread gained
## nothing on an idle 2-core machine (docs/BENCHMARKS.md, "Ray runner") and was measured up to 60x slower on a loaded one.
## Tests that are about thread counts set their own.
## Two pytest workers (TEST_WORKERS=0 for one process), each taking whole files (tests/conftest.py
## groups them; the numba-kernel files form one group, compiled once), so module- and
## session-scoped fixtures (a simulated Ray cluster, a Ray instance) stay within one worker. The
## embedded checkpoints are trained (or verified) first, at torch's default threads, so that the
## workers never train them side by side.
TEST_THREADS = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) scripts/train_digits.py
	$(TEST_THREADS) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) scripts/train_digits.py
	$(TEST_THREADS) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check engine kernels tests scripts
	$(VENV)/bin/mypy

## Train (or verify) the embedded checkpoints ahead of time.
checkpoints: $(STAMP)
	$(PY) scripts/train_digits.py

## Benchmarks and the full AutoAttack parity run (minutes each; figures go to docs/BENCHMARKS.md).
bench-corruptions: $(STAMP)
	$(PY) scripts/bench_corruptions.py $(ARGS)

bench-attacks: $(STAMP)
	$(PY) scripts/bench_attacks.py $(ARGS)

parity: $(STAMP)
	$(PY) scripts/parity_autoattack.py $(ARGS)

clean:
	rm -rf runs outputs .pytest_cache .mypy_cache .ruff_cache
