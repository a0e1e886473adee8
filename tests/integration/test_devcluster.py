"""The devcluster itself: real components, RBAC with working service accounts, the simulated spot topology,
the pods a job renders scheduled onto the right pools and zones, and a stop that leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrain_dev import topology
from spotrain_dev.cluster import DevCluster
from spotrain_dev.testing import wait_for
from spotrain_operator import wellknown as wk
from spotrain_operator.api import parse_spec
from spotrain_operator.core.placement import Choice
from spotrain_operator.core.pods import JobRef, render_worker

REPO = Path(__file__).resolve().parents[2]


def test_version_and_components(devcluster: DevCluster) -> None:
    version = json.loads(devcluster.kubectl("version", "-o", "json"))["serverVersion"]
    assert version["gitVersion"].startswith("v1.36.")
    assert devcluster.apiserver_url.startswith("https://127.0.0.1:")
    assert {p.name for p in devcluster.processes} == {"etcd", "kube-apiserver", "kube-controller-manager",
                                                      "kube-scheduler", "kwok"}


def test_topology_nodes_carry_each_clouds_labels_and_taints(core: client.CoreV1Api) -> None:
    topo = topology.load()
    nodes = {n.metadata.name: n for n in core.list_node(label_selector="type=kwok").items}
    by_pool: dict[str, list[client.V1Node]] = {}
    for n in nodes.values():
        by_pool.setdefault(n.metadata.labels.get(topology.POOL_LABEL, ""), []).append(n)
    for pool in topo.pools:
        members = by_pool[pool.name]
        assert {n.metadata.labels[wk.ZONE] for n in members} == set(topo.zones)
        for n in members:
            labels = n.metadata.labels
            assert labels[wk.INSTANCE_TYPE] in pool.instance_types
            addresses = {a.type: a.address for a in n.status.addresses}
            assert addresses["InternalIP"].startswith("127.")
            assert n.spec.pod_cidr.startswith("127.")
    assert all(n.metadata.labels[wk.KARPENTER_CAPACITY_TYPE] == "spot" for n in by_pool["spot-cpu"])
    assert all(n.metadata.labels[wk.KARPENTER_CAPACITY_TYPE] == "on-demand" for n in by_pool["on-demand"])
    assert all(n.metadata.labels[wk.EKS_CAPACITY_TYPE] == "SPOT" for n in by_pool["spot-gpu"])
    assert all(n.status.allocatable["nvidia.com/gpu"] == "1" for n in by_pool["spot-gpu"])
    assert all(n.metadata.labels[wk.GKE_SPOT] == "true" for n in by_pool["gke-spot"])
    for n in by_pool["aks-spot"]:
        assert n.metadata.labels[wk.AKS_PRIORITY] == "spot"
        assert [(t.key, t.value, t.effect) for t in n.spec.taints] == [(wk.AKS_PRIORITY, "spot", "NoSchedule")]
    assert all(n.spec.provider_id.startswith("aws:///") for n in by_pool["spot-cpu"])


@pytest.mark.parametrize(("pool", "selector", "tolerations"), [
    ("spot-cpu", {"karpenter.sh/nodepool": "spot-cpu"}, []),
    ("spot-gpu", {"eks.amazonaws.com/nodegroup": "spot-gpu"}, []),
    ("gke-spot", {"cloud.google.com/gke-nodepool": "gke-spot"}, []),
    ("aks-spot", {"kubernetes.azure.com/agentpool": "aks-spot"},
     [{"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"}]),
])
def test_rendered_workers_are_scheduled_onto_their_pool_and_zone(
    core: client.CoreV1Api, namespace: str, pool: str, selector: dict[str, str], tolerations: list[dict[str, str]]
) -> None:
    raw = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())["spec"]
    raw["placement"]["pools"] = [{"name": pool, "nodeSelector": selector, "capacityType": "spot",
                                  "tolerations": tolerations},
                                 {"name": "on-demand", "nodeSelector": {"karpenter.sh/nodepool": "on-demand"},
                                  "capacityType": "on-demand"}]
    spec = parse_spec(raw)
    job = JobRef("sched", namespace, "00000000-1111-2222-3333-444444444444")
    names = []
    for i, zone in enumerate(topology.load().zones, start=1):
        manifest = render_worker(job, spec, Choice(pool, zone), i, 1, None)
        manifest["metadata"]["ownerReferences"] = []  # no job object here; only placement is under test
        core.create_namespaced_pod(namespace, manifest)
        names.append((manifest["metadata"]["name"], zone))

    def running() -> bool:
        return all(core.read_namespaced_pod(n, namespace).status.phase == "Running" for n, _ in names)

    wait_for("pods Running", running)
    for name, zone in names:
        node = core.read_node(core.read_namespaced_pod(name, namespace).spec.node_name)
        assert node.metadata.labels[topology.POOL_LABEL] == pool
        assert node.metadata.labels[wk.ZONE] == zone


def test_service_accounts_get_tokens_and_rbac_applies(devcluster: DevCluster, core: client.CoreV1Api,
                                                      api_client: client.ApiClient, namespace: str) -> None:
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}}).status.token
    config = client.Configuration()
    config.host = devcluster.apiserver_url
    config.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    as_reader = client.CoreV1Api(client.ApiClient(config))
    with pytest.raises(ApiException) as denied:
        as_reader.list_namespaced_pod(namespace)
    assert denied.value.status == 403
    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "pods"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader-pods"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                         "name": "pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    wait_for("RBAC allows the list", lambda: as_reader.list_namespaced_pod(namespace) is not None)


def test_cli_adds_signals_and_removes_nodes(devcluster: DevCluster, core: client.CoreV1Api) -> None:
    cli = [sys.executable, "-m", "spotrain_dev.cli", "--kubeconfig", str(devcluster.kubeconfig)]
    name = subprocess.run([*cli, "add-node", "gke-spot", "us-east-1b"], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        wait_for("node Ready", lambda: any(c.type == "Ready" and c.status == "True"
                                           for c in core.read_node(name).status.conditions or []))
        subprocess.run([*cli, "signal", name, "gke-impending"], check=True)
        assert wk.GKE_IMPENDING_TERMINATION in [t.key for t in core.read_node(name).spec.taints]
        listing = subprocess.run([*cli, "nodes"], check=True, capture_output=True, text=True).stdout
        assert name in listing and wk.GKE_IMPENDING_TERMINATION in listing
    finally:
        subprocess.run([*cli, "remove-node", name], check=True)
    wait_for("node gone", lambda: name not in [n.metadata.name for n in core.list_node().items])


def test_a_killed_supervisor_leaves_no_process_behind(tmp_path: Path) -> None:
    env = {**os.environ, "SPOTRAIN_DEV_DIR": str(tmp_path)}
    supervisor = subprocess.Popen([sys.executable, "-m", "spotrain_dev.cli", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        state = tmp_path / "cluster" / "state.json"
        wait_for("devcluster ready", lambda: (tmp_path / "ready").exists(), timeout=180)
        pids = json.loads(state.read_text())["pids"]
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    finally:
        supervisor.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel must take the children
        supervisor.wait()

    def all_gone() -> bool:
        alive = []
        for pid in pids.values():
            try:
                os.kill(pid, 0)
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split()[2] != "Z":
                        alive.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass
        return not alive

    wait_for("components gone", all_gone, timeout=30)
