"""Fixtures of the end-to-end tests (the Harness comes from tests/conftest.py): a moto S3 server, and the pod
runner that runs the test's pods as real processes (torch on CPU)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spotrain_dev.cluster import DevCluster
from spotrain_dev.demo import DUMMY_KEYS, s3_client, start_moto
from spotrain_dev.podrunner import PodRunner
from spotrain_dev.processes import free_port
from spotrain_dev.testing import Harness


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


TinyJob = Callable[..., dict[str, Any]]


@pytest.fixture
def tiny_job(harness: Harness, s3_endpoint: str) -> TinyJob:
    """Makes the manifest of a job of ``examples/train_tiny.py``: ``make(bucket, args, min_nodes=, max_nodes=)``."""
    return functools.partial(_tiny_job, harness, s3_endpoint)


def _tiny_job(harness: Harness, s3_endpoint: str, bucket: str, args: list[str], *, min_nodes: int,
              max_nodes: int) -> dict[str, Any]:
    """A job of ``examples/train_tiny.py`` with ``args`` (one CPU per worker, no fallback pool), checkpointing to
    ``bucket`` on the moto server, which this creates with the credentials Secret the job names."""
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    harness.core.create_namespaced_secret(harness.namespace, {"metadata": {"name": "s3"}, "stringData": DUMMY_KEYS})
    manifest = harness.job_manifest(min_nodes=min_nodes, max_nodes=max_nodes)
    del manifest["spec"]["fallback"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["args"] = ["examples/train_tiny.py", *args]
    container["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
    manifest["spec"]["checkpoint"] = {"uri": f"s3://{bucket}/job", "s3": {"endpointURL": s3_endpoint,
                                                                         "credentialsSecret": "s3"}}
    return manifest
