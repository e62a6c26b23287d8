# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is pinned and installed first so that pip takes the CPU build from this machine's disk.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
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
