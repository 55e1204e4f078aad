# corral: `make demo` runs the main demo, `make test` runs every check.
PYTHON ?= python3
TORCH := torch==2.13.0
DEEPSPEED := deepspeed==0.19.8
# The venv (torch alone is several GB from PyPI) is cached outside the clone, keyed by the
# Python version, pyproject.toml and the pins, so CI on the same machine reuses it; each clone
# then only re-points the editable install at itself (.corral-installed).
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
DEPS_KEY := $(shell (cat pyproject.toml; echo $(TORCH) $(DEEPSPEED)) | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/corral/venv-py$(PYVER)-$(DEPS_KEY)
BIN := $(VENV)/bin

.PHONY: demo test lint unit bench system-deps slurm-up slurm-down k8s-build k8s-up k8s-down clean
# Debian packages the tests use: Open MPI, a real Slurm cluster with ssh for submission, and
# etcd + openssl for the Kubernetes test cluster, chromium + its driver for the dashboard tests.
APT_PACKAGES := openmpi-bin libopenmpi-dev mpich slurmctld slurmd slurm-client munge \
	openssh-server openssh-client rsync iproute2 util-linux procps etcd-server openssl \
	chromium chromium-driver

$(VENV)/.deps:
	@$(MAKE) --no-print-directory system-deps
	rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" numpy
	$(BIN)/pip install --quiet -e ".[test]" "$(TORCH)"
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --no-build-isolation "$(DEEPSPEED)" "$(TORCH)"
	touch $@

.corral-installed: $(VENV)/.deps pyproject.toml
	$(BIN)/pip install --quiet --no-deps -e .
	echo $(VENV) > $@

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

demo: .corral-installed
	$(BIN)/corral run --name mingpt --nodes 2 --procs-per-node 1 --launcher torchrun \
		examples/mingpt/train.py -- --steps 200 --no-resume

lint: .corral-installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

unit: .corral-installed k8s-build
	$(BIN)/python -m pytest -q

test: lint unit

bench: .corral-installed
	$(BIN)/python bench/launch_overhead.py

# The Slurm test cluster (controller + 3 nodes in network namespaces), for use by hand.
slurm-up: .corral-installed
	$(BIN)/python tests/infra/slurm_cluster.py up

slurm-down:
	$(PYTHON) tests/infra/slurm_cluster.py down

# The Kubernetes test cluster (control plane, Volcano, Kueue, JobSet, 3 fake kubelets). Its
# binaries are built from Go modules once, into ~/.cache/corral/k8s-<go>-<key>/ (minutes cold).
k8s-build:
	bash tests/infra/k8s/build.sh

k8s-up: .corral-installed k8s-build
	$(BIN)/python tests/infra/k8s_cluster.py up

k8s-down:
	$(PYTHON) tests/infra/k8s_cluster.py down

clean:
	rm -rf .corral-installed .mypy_cache .ruff_cache .pytest_cache build src/*.egg-info
