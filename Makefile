# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Where torch comes from (`make setup`, `make image`). Empty: pip's own configuration, which on
# this machine finds the local CPU wheel. Elsewhere set the CPU index, or pip takes PyPI's
# multi-GB CUDA build:  make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is pinned and installed first, from TORCH_INDEX_URL when set, so that it is the CPU build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) prometheus-tools
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/faults

# Fault injection (kills, broker outage, rebalance storm, fuzzing, soak); CI runs it after `make test`.
.PHONY: faults
faults: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -s tests/faults

# promtool (Debian package `prometheus`) for tests/test_deploy.py.
.PHONY: prometheus-tools
prometheus-tools:
	command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)

demo: $(STAMP)
	$(PY) -m detector.demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .demo

.PHONY: docs evaluate
docs: $(STAMP)
	$(PY) -m detector.docs

evaluate: $(STAMP)
	$(PY) -m detector.cli evaluate --skab ../shared/data/skab --nab ../shared/data/nab --out evaluation.json

# The container image, built with podman on a debootstrap base (deploy/image/build.py), tagged
# detector:<version>; the container test runs it as shipped and as the Kubernetes Deployment does.
.PHONY: image-tools image lint-docker test-image
image-tools:
	command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc debootstrap)

image: image-tools
	TORCH_INDEX_URL='$(TORCH_INDEX_URL)' PYTHON=$(PYTHON) $(PYTHON) deploy/image/build.py

lint-docker: $(STAMP)
	$(VENV)/bin/hadolint Dockerfile

test-image: $(STAMP) lint-docker image
	DETECTOR_TEST_IMAGE=1 $(PY) -m pytest -q -p no:cacheprovider tests/image
