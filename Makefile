# corral: `make demo` runs the main demo, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test lint unit bench system-deps clean

$(VENV)/.installed: pyproject.toml
	@command -v mpicc >/dev/null || $(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" numpy
	$(BIN)/pip install --quiet -e ".[test]" "$(TORCH)"
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --no-build-isolation deepspeed==0.19.8 "$(TORCH)"
	touch $@

# Open MPI (mpirun for the mpirun launcher, mpicc to build mpi4py) from Debian's packages.
system-deps:
	@if command -v mpirun >/dev/null && command -v mpicc >/dev/null; then exit 0; fi; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
		openmpi-bin libopenmpi-dev

demo: $(VENV)/.installed
	$(BIN)/corral run --name mingpt --nodes 2 --procs-per-node 1 --launcher torchrun \
		examples/mingpt/train.py -- --steps 200 --no-resume

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test: lint unit

bench: $(VENV)/.installed
	$(BIN)/python bench/launch_overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build src/*.egg-info
