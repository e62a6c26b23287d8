# Two commands do everything on a fresh machine: `make demo` and `make test`. While working:
# `make unit` (the tests that need no broker, under a minute) and `make lint`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TOOLS  := $(VENV)/.tools-installed
LINT_PATHS := detector tests benchmarks deploy
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
HADOLINT := $(VENV)/bin/hadolint Dockerfile
# Where torch comes from (`make setup`, `make image`). Empty: pip's own configuration, which on
# this machine finds the local CPU wheel. Elsewhere set the CPU index, or pip takes PyPI's
# multi-GB CUDA build:  make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=

.PHONY: setup setup-tools demo test unit lint bench clean

setup: $(STAMP)

# torch is pinned and installed first, from TORCH_INDEX_URL when set, so that it is the CPU build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole suite less the fault injection and the container tests (their own targets below).
test: $(STAMP) $(TOOLS)
	$(PYTEST) tests --ignore=tests/faults --ignore=tests/image

# The quick tests: no broker (tests/conftest.py marks every test that uses one `kafka`), nothing `slow`.
unit: $(STAMP) $(TOOLS)
	$(PYTEST) -m "not kafka and not slow" tests --ignore=tests/faults --ignore=tests/image

# Fault injection (kills, broker outage, rebalance storm, fuzzing, soak); CI runs it after `make test`.
.PHONY: faults
faults: $(STAMP)
	$(PYTEST) -s tests/faults

# System tools the tests run: promtool and prometheus (Debian package `prometheus`) for
# tests/test_deploy.py and tests/test_observability.py. Installed once; `make clean` forgets it.
setup-tools: $(TOOLS)

$(TOOLS): | $(STAMP)
	command -v promtool >/dev/null && command -v prometheus >/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus)
	touch $(TOOLS)

# ruff (lint, import order, format), mypy on detector/ and benchmarks/, hadolint on the Dockerfile. Every check
# runs; the target fails if any of them failed.
lint: $(STAMP)
	@status=0; \
	echo "ruff check $(LINT_PATHS)"; $(VENV)/bin/ruff check --quiet --output-format concise $(LINT_PATHS) || status=1; \
	echo "ruff format --check $(LINT_PATHS)"; $(VENV)/bin/ruff format --check --quiet $(LINT_PATHS) || status=1; \
	echo "mypy"; $(VENV)/bin/mypy || status=1; \
	echo "$(HADOLINT)"; $(HADOLINT) || status=1; \
	exit $$status

demo: $(STAMP)
	$(PY) -m detector.demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .demo .mypy_cache .ruff_cache

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
	$(HADOLINT)

test-image: $(STAMP) lint-docker image
	DETECTOR_TEST_IMAGE=1 $(PYTEST) tests/image
