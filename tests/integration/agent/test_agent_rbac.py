"""spotrain-agent with nothing but its RBAC: a ServiceAccount token allowed to get and patch nodes."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from kubernetes import client

from spotrain_dev import processes
from spotrain_dev.timestamps import rfc3339

if TYPE_CHECKING:
    from tests.integration.agent.conftest import Harness

pytestmark = pytest.mark.cluster


def token_kubeconfig(harness: Harness, namespace: str, path: Path) -> list[tuple[str, str]]:
    """A ServiceAccount bound to a ClusterRole with get and patch on nodes, and a kubeconfig with its token;
    returns the cluster-scoped objects to delete."""
    rbac = client.RbacAuthorizationV1Api(harness.core.api_client)
    name = f"spotrain-agent-test-{uuid.uuid4().hex[:6]}"
    harness.core.create_namespaced_service_account(namespace, {"metadata": {"name": "agent"}})
    rbac.create_cluster_role({"metadata": {"name": name},
                              "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]})
    rbac.create_cluster_role_binding({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}],
    })
    token = harness.core.create_namespaced_service_account_token(
        "agent", namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    admin = yaml.safe_load(harness.devcluster.kubeconfig.read_text())
    admin["users"] = [{"name": "agent", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "agent"
    path.write_text(yaml.safe_dump(admin))
    return [("clusterrole", name), ("clusterrolebinding", name)]


def test_get_and_patch_on_nodes_is_enough(harness: Harness, namespace: str, tmp_path: Path) -> None:
    rbac = client.RbacAuthorizationV1Api(harness.core.api_client)
    kubeconfig = tmp_path / "agent-kubeconfig"
    created = token_kubeconfig(harness, namespace, kubeconfig)
    try:
        node = harness.node()
        port = processes.free_port()
        when = rfc3339(datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=2))
        harness.ec2_metadata_mock(port, "spot", "--time", when)
        # --provider auto reads the Node (get); marking reads and patches it.
        agent = harness.agent(node, "auto", f"http://127.0.0.1:{port}", "--interval", "0.5", kubeconfig=kubeconfig)
        harness.wait_for("the spot-itn mark", lambda: harness.mark(node).taint == "aws-spot-itn", agent=agent)
        assert harness.mark(node).deadline == when
        assert not [e for e in harness.log_lines(agent) if e["level"] in ("warning", "error")]
    finally:
        for kind, name in created:
            if kind == "clusterrole":
                rbac.delete_cluster_role(name)
            else:
                rbac.delete_cluster_role_binding(name)

