"""Fixtures of the operator tests: a Harness per test (its own namespace, KWOK nodes and operator processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.testing import Harness


@pytest.fixture
def harness(devcluster: DevCluster, namespace: str, api_client: client.ApiClient,
            tmp_path: Path) -> Iterator[Harness]:
    h = Harness(devcluster, namespace, api_client, NodeSimulator.from_kubeconfig(devcluster.kubeconfig), tmp_path)
    try:
        yield h
    finally:
        h.cleanup()
