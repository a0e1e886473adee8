"""GPU tests: ``make test-gpu`` runs them on a machine with a CUDA device; elsewhere every one is skipped with the
reason printed (``-rs``). NCCL needs a distinct device per rank, so they run NCCL at world size 1 (a world of one
on one GPU) and reach other world sizes by saving on CPU/gloo and restoring onto the GPU."""

from __future__ import annotations

import pytest
import torch

NO_GPU = "no CUDA device (torch.cuda.is_available() is False): GPU tests run with `make test-gpu` on a GPU machine"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (make test-gpu)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(skip)
