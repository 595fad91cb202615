# KI Trading Mesh. A new user needs two commands: `make up` (whole mesh, embedded defaults)
# and `make test`. Both create .venv and install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.deps-$(shell cat pyproject.toml deploy/llama_cpp.sh 2>/dev/null | sha1sum | cut -c1-12)
# One math thread per process on small machines (services set this too; see docs/architecture.md).
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export PYTHONDONTWRITEBYTECODE := 1
BREAKING_AGAINST ?= .git\#ref=HEAD~1

.PHONY: deps up test test-fast timescaledb chromium promtool shellcheck generate check-generated lint format breaking bench clean-venv sdk

$(STAMP): pyproject.toml deploy/llama_cpp.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=25.1"
	@# torch first, on its own: the local CPU build (any other spec pulls gigabytes of CUDA).
	$(PIP) install -q "torch==2.13.0"
	@# llama-cpp-python: a portable CPU build, compiled once and cached (the native build crashes).
	bash deploy/llama_cpp.sh $(PY)
	$(PIP) install -q -e ".[ml]" --group dev
	@rm -f $(VENV)/.deps-* && touch $@

deps: $(STAMP)

up: deps
	$(VENV)/bin/kitrading up

test: deps timescaledb chromium promtool shellcheck
	$(PY) -m pytest

# Debian's chromium for the dashboard's browser tests, apt-get installed where missing (docs/dashboard.md).
chromium:
	@bash deploy/chromium.sh

# Debian's shellcheck for the deploy scripts' lint test (tests/deploy/test_backup.py), the same way.
shellcheck:
	@bash deploy/apt_install.sh shellcheck shellcheck "the deploy scripts' shellcheck test"

# promtool from Debian's prometheus package, fetched once where missing, for the observability tests
# (deploy/observability: config, alert rules, dashboard queries; docs/observability.md).
promtool:
	@bash deploy/promtool.sh >/dev/null

# PostgreSQL + TimescaleDB for the tests of the hypertable path: built once (~20 s), cached (docs/data.md).
timescaledb: deps
	@bash deploy/timescaledb.sh $(PY) >/dev/null

test-fast: deps
	$(PY) -m pytest -m "not e2e and not slow"

generate: deps
	$(PY) protos/generate.py
	$(VENV)/bin/ruff format -q clients/kitrading/client/_generated.py gateway/generated 2>/dev/null || true

check-generated: generate
	@if [ -n "$$(git status --porcelain -- clients gateway/generated protos)" ]; then \
	  git status --porcelain -- clients gateway/generated protos; \
	  echo "generated files differ from the contracts: run 'make generate' and commit"; exit 1; fi
	@echo "generated files match the contracts"

lint: deps check-generated
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services gateway clients/kitrading bench tests

format: deps
	$(VENV)/bin/ruff check --fix -q . || true
	$(VENV)/bin/ruff format -q .

# Contract compatibility (WIRE_JSON) against a git ref: `make breaking BREAKING_AGAINST='.git#branch=main'`.
breaking: deps
	@if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:protos/kitrading 2>/dev/null; then \
	  $(VENV)/bin/buf breaking --against '$(BREAKING_AGAINST)' && echo "buf breaking: compatible with $(BREAKING_AGAINST)"; \
	else echo "buf breaking: no earlier contracts to compare with"; fi

# The client SDK alone as a wheel, kitrading-sdk (clients/pyproject.toml; docs/sdk.md): clients/dist/.
sdk: deps
	@rm -rf clients/build
	$(PIP) wheel -q --no-deps --no-build-isolation -w clients/dist ./clients
	@ls -l clients/dist/kitrading_sdk-*.whl

# Each prints ratios measured in one run against its own baseline (docs/benchmarks.md).
bench: deps
	$(PY) -m bench.gateway_latency
	$(PY) -m bench.runtime_profile
	$(PY) -m bench.candles_bulk
	$(PY) -m bench.forecast_serving
	$(PY) -m bench.llm_stream

clean-venv:
	rm -rf $(VENV)
