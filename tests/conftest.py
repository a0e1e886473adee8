"""Fixtures shared by the whole suite: one real local control plane per test session (started only when a
test asks for it), and a fresh namespace per test."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.testing import Harness, wait_for


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    cluster = DevCluster(tmp_path_factory.mktemp("devcluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def api_client(devcluster: DevCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(devcluster.kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> Iterator[str]:
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:5]
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are admitted only once the controller-manager has made the namespace's default ServiceAccount.
    wait_for(f"the default ServiceAccount in {name}", lambda: core.list_namespaced_service_account(
        name, field_selector="metadata.name=default").items, timeout=60, interval=0.2)
    yield name
    core.delete_namespace(name)


@pytest.fixture
def harness(devcluster: DevCluster, namespace: str, api_client: client.ApiClient,
            tmp_path: Path) -> Iterator[Harness]:
    """The operator tests' world: the test's namespace, KWOK nodes of its own, operator processes it starts."""
    h = Harness(devcluster, namespace, api_client, NodeSimulator.from_kubeconfig(devcluster.kubeconfig), tmp_path)
    try:
        yield h
    finally:
        h.cleanup()
