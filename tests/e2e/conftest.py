"""Fixtures of the end-to-end tests (the Harness comes from tests/conftest.py): a moto S3 server, and the pod
runner that runs the test's pods as real processes (torch on CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spotrain_dev.cluster import DevCluster
from spotrain_dev.demo import start_moto
from spotrain_dev.podrunner import PodRunner
from spotrain_dev.processes import free_port


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    moto = start_moto(port, tmp_path / "moto")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        moto.stop()


@pytest.fixture
def podrunner(devcluster: DevCluster, namespace: str, tmp_path: Path) -> Iterator[PodRunner]:
    runner = PodRunner(devcluster.kubeconfig, tmp_path / "podrunner", (namespace,))
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()
        assert runner.leftover_pids() == [], "processes of the test's pods outlived the pod runner"
