# spotrain: `make demo` and `make test` are the only set-up a new machine needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help venv testbin lint test test-unit test-gpu dev-up dev-down run demo bench clean

help:
	@echo "make demo      bring up the local cluster and run the demo"
	@echo "make test      venv + control plane binaries + ruff + mypy + the whole pytest suite"
	@echo "make test-gpu  the GPU tests (tests/gpu; skipped with the reason where no CUDA device is present)"
	@echo "make dev-up / dev-down   start / stop the devcluster (.dev/kubeconfig)"
	@echo "make run       the operator in the foreground against .dev/kubeconfig"
	@echo "make bench     benchmarks: bench/results.json (docs/benchmarks.md) and a table; BENCH_ARGS='--only simulation'"

# The venv is rebuilt only when pyproject.toml changes; uv keeps downloaded wheels (torch's CUDA libraries
# are several GB) in its cache, so even a rebuild downloads nothing twice.
$(STAMP): pyproject.toml
	@echo "[make] installing Python dependencies into $(VENV) (first time: several minutes, torch is large)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	@$(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[operator,trainer,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

testbin:
	@bash dev/testbin/build.sh >/dev/null

lint: venv
	@echo "[make] ruff"
	@$(BIN)/ruff check .
	@echo "[make] mypy"
	@$(BIN)/mypy
	@echo "[make] hadolint"
	@$(BIN)/hadolint Dockerfile

test: venv testbin lint
	@echo "[make] pytest"
	@$(BIN)/pytest $(PYTEST_ARGS)

test-unit: venv
	@$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# On a machine with a CUDA device; elsewhere every GPU test is skipped and the reason printed.
test-gpu: venv
	@$(BIN)/pytest tests/gpu -m gpu -rs $(PYTEST_ARGS)

dev-up: venv testbin
	@$(BIN)/spotrain-dev up

dev-down: venv
	@$(BIN)/spotrain-dev down

run: venv
	@$(BIN)/spotrain-operator --kubeconfig .dev/kubeconfig

demo: venv testbin
	@$(BIN)/python -m spotrain_dev.demo

bench: venv testbin
	@$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .dev .mypy_cache .ruff_cache .pytest_cache
