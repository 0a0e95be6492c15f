# Set-up is part of every target: the first `make test` or `make demo` creates .venv and installs
# the project (pinned in setup.cfg) into it; later runs reuse it until setup.cfg changes.
# `make demo` installs only the base install and the `demo` extra; the test extra (which holds
# all of the demo's) is installed by the other targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: help demo test test-all bench bench-runtimes bench-throughput models lint clean oldpython

help:
	@echo "make demo      start a daemon on this CPU, serve two tenants, print what happened; then a short"
	@echo "               concurrency-scaling run (ncs2, jetson-nano, edgetpu on calibrated device twins) with its summary table"
	@echo "make test      run the test suite (unit, integration, end to end)"
	@echo "make test-all  also the slow checks (-m slow)"
	@echo "make bench     daemon vs direct LiteRT overhead benchmark, then worker vs inline vs direct (prints tables)"
	@echo "make bench-runtimes  one network via LiteRT, OpenVINO, ONNX Runtime: direct vs daemon"
	@echo "make bench-throughput  direct vs tenantd (vs PyTriton, Ray Serve) at 1/4/16 clients (BENCH_ARGS='--quick --peers-python P')"
	@echo "make models    build the model zoo into .cache/models, ~4 min (MODELS_ARGS='NAMES --formats F' for part)"
	@echo "make lint      ruff and mypy"
	@echo "make oldpython build Debian 11's Python 3.9 + tflite-runtime 2.14 + OpenVINO 2022.3 under /var/lib/tenantd-oldpy"
	@echo "               (root), for worker_python = packaging/oldpython/python3.9; tests: pytest -m oldpython"

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m experiments.demo
	$(PY) -m experiments.concurrency --quick

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m experiments.overhead
	$(PY) -m experiments.worker_overhead

bench-runtimes: $(STAMP)
	$(PY) -m experiments.runtimes_bench

bench-throughput: $(STAMP)
	$(PY) -m experiments.throughput $(BENCH_ARGS)

models: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[zoo]'
	$(PY) -m models build $(MODELS_ARGS)

lint: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	$(PY) -m ruff check tenantd clients models tests experiments
	$(PY) -m ruff format --check tenantd clients models tests experiments
	$(PY) -m mypy tenantd clients/tenantwire clients/tenantclient

oldpython:
	sh packaging/oldpython/build.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
