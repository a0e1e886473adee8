# spotrain: `make demo` and `make test` are the only set-up a new machine needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock | sha1sum | cut -c1-12)
# uv itself (it reads and writes uv.lock, whose format it versions); installed into the venv with pip.
UV_VERSION := 0.13.9
# The extras the venv holds (every one the project's code, tests and tools import).
EXTRAS := operator trainer dev
PYTEST_ARGS ?=

.PHONY: help venv requirements testbin lint test test-unit test-gpu dev-up dev-down run demo bench clean

help:
	@echo "make demo      bring up the local cluster and run the demo"
	@echo "make test      venv + control plane binaries + ruff + mypy + the whole pytest suite"
	@echo "make test-gpu  the GPU tests (tests/gpu; skipped with the reason where no CUDA device is present)"
	@echo "make dev-up / dev-down   start / stop the devcluster (.dev/kubeconfig)"
	@echo "make run       the operator in the foreground against .dev/kubeconfig"
	@echo "make bench     benchmarks: bench/results.json (docs/benchmarks.md) and a table; BENCH_ARGS='--only simulation'"

# The venv holds exactly what uv.lock pins (`uv sync --locked` checks each download against the lock's hashes,
# and fails if uv.lock is out of date with pyproject.toml: run `uv lock` and commit it). It is rebuilt only when
# pyproject.toml or uv.lock changes. --inexact leaves pip and uv, which are not in the lock, in place. uv keeps
# downloaded wheels (torch's CUDA libraries are several GB) in its cache, so a rebuild downloads nothing twice.
$(STAMP): pyproject.toml uv.lock
	@echo "[make] installing the locked Python dependencies into $(VENV) (first time: several minutes, torch is large)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync --quiet --locked --inexact $(addprefix --extra ,$(EXTRAS))
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

# The images' hashed requirements, exported from uv.lock: one file per image, and the trainer's without torch's
# dependency tree for TORCH_INDEX_URL builds (see the Dockerfile). tests/unit/test_lockfile.py runs this target
# into a temporary REQUIREMENTS_DIR and checks that the committed files are what it writes.
REQUIREMENTS_DIR ?= requirements
UV_EXPORT = $(BIN)/uv export --quiet --locked --no-emit-project --format requirements-txt
requirements:
	@mkdir -p $(REQUIREMENTS_DIR)
	@$(UV_EXPORT) --extra operator > $(REQUIREMENTS_DIR)/operator.txt
	@$(UV_EXPORT) --extra trainer > $(REQUIREMENTS_DIR)/trainer.txt
	@$(UV_EXPORT) --extra trainer --prune torch > $(REQUIREMENTS_DIR)/trainer-without-torch.txt

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
