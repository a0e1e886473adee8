"""Autoscaled pools with a real Karpenter (its KWOK provider), the real scheduler and the operator process: jobs that
start from zero nodes, capacity that does not come, fallback and return, disruption, and room on shared nodes.

Karpenter starts once for this module (the fixture below) and is gone for the rest of the suite, which pays nothing
for it; each test makes NodePools of its own, named after its namespace, so their nodes (labelled
karpenter.sh/nodepool=NAME) serve only its jobs.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import yaml
from kubernetes import client

from spotrain_dev.cluster import REPO, DevCluster
from spotrain_dev.karpenter import NODE_POOLS, Karpenter, node_pool
from spotrain_dev.testing import ZONES, FakeTrainerEndpoints, Harness, wait_for
from spotrain_operator import wellknown as wk
from spotrain_operator.core.placement import Choice
from spotrain_operator.core.pods import JobRef
from spotrain_operator.core.provisioning import render_probe

KARPENTER = (wk.KARPENTER_GROUP, wk.KARPENTER_VERSION)
PROVISIONING = 180.0  # a NodeClaim, a KWOK node turning Ready and a scheduled pod, on a loaded 2-core machine


@pytest.fixture(scope="module")
def karpenter(devcluster: DevCluster) -> Iterator[Karpenter]:
    k = Karpenter(devcluster)
    k.start(node_pools=None)
    try:
        yield k
        # The tests' NodePools are deleted; Karpenter's finalizers must remove their NodeClaims and nodes.
        wait_for("Karpenter's nodes removed", lambda: not devcluster.kubectl("get", "nodeclaims", "-o", "name"),
                 timeout=PROVISIONING)
    finally:
        k.stop()


class NodePools:
    """The test's Karpenter NodePools; deleted afterwards (Karpenter then removes their nodes)."""

    def __init__(self, harness: Harness):
        self.harness = harness
        self.names: list[str] = []

    def create(self, suffix: str, capacity_type: str, zones: tuple[str, ...] = ZONES,
               instance_types: tuple[str, ...] = ("m6i.2xlarge",), limits: dict[str, str] | None = None,
               consolidate_after: str = "Never") -> str:
        name = f"t{self.harness.namespace[-5:]}-{suffix}"
        manifest = node_pool(name, capacity_type, list(zones), list(instance_types), limits,
                             consolidate_after=consolidate_after)
        self.harness.custom.create_cluster_custom_object(*KARPENTER, wk.KARPENTER_NODEPOOLS, manifest)
        self.names.append(name)
        return name

    def set_limits(self, name: str, limits: dict[str, str]) -> None:
        self.harness.custom.patch_cluster_custom_object(*KARPENTER, wk.KARPENTER_NODEPOOLS, name,
                                                        {"spec": {"limits": limits}})

    def usage(self, name: str) -> dict[str, str]:
        body = self.harness.custom.get_cluster_custom_object(*KARPENTER, wk.KARPENTER_NODEPOOLS, name)
        return dict((body.get("status") or {}).get("resources") or {})

    def node_claims(self, name: str) -> list[dict[str, Any]]:
        items = self.harness.custom.list_cluster_custom_object(
            *KARPENTER, "nodeclaims", label_selector=f"{wk.KARPENTER_NODEPOOL}={name}")["items"]
        return list(items)

    def cleanup(self) -> None:
        for name in self.names:
            self.harness.custom.delete_cluster_custom_object(*KARPENTER, wk.KARPENTER_NODEPOOLS, name)


@pytest.fixture
def node_pools(harness: Harness, karpenter: Karpenter) -> Iterator[NodePools]:
    pools = NodePools(harness)
    try:
        yield pools
    finally:
        pools.cleanup()


def karpenter_pool(name: str, node_pool_name: str, capacity_type: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "capacityType": capacity_type, "nodeSelector": {wk.KARPENTER_NODEPOOL: node_pool_name},
            **extra}


def _node(harness: Harness, name: str) -> client.V1Node:
    return harness.core.read_node(name)


def _events(harness: Harness, reason: str) -> list[str]:
    return [e.message for e in harness.events(reason)]


def _time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_job_on_nodepools_with_zero_nodes_starts(harness: Harness, node_pools: NodePools) -> None:
    spot = node_pools.create("spot", "spot", instance_types=("m6i.2xlarge", "c6i.2xlarge"))
    on_demand = node_pools.create("od", "on-demand")
    harness.start_operator()
    harness.create_job(harness.job_manifest(min_nodes=2, max_nodes=3, pools=[
        karpenter_pool("spot", spot, "spot"), karpenter_pool("on-demand", on_demand, "on-demand")]))

    wait_for("Running with 3 ready workers", lambda: (s := harness.status()).get("phase") == "Running"
             and s.get("readyWorkers") == 3, timeout=PROVISIONING)
    workers = harness.running_workers()
    nodes = [_node(harness, w.spec.node_name) for w in workers]
    assert sorted(n.metadata.labels[wk.ZONE] for n in nodes) == sorted(ZONES)
    for worker, node in zip(workers, nodes, strict=True):
        assert node.metadata.labels[wk.KARPENTER_NODEPOOL] == spot
        assert node.metadata.labels[wk.KARPENTER_CAPACITY_TYPE] == "spot"
        assert node.metadata.labels[wk.ZONE] == worker.metadata.annotations[wk.ZONE]
    claims = node_pools.node_claims(spot)
    assert sorted(c["metadata"]["labels"][wk.ZONE] for c in claims) == sorted(ZONES)
    assert {c["metadata"]["labels"][wk.KARPENTER_CAPACITY_TYPE] for c in claims} == {"spot"}
    (store,) = harness.pods("rendezvous")
    assert _node(harness, store.spec.node_name).metadata.labels[wk.KARPENTER_CAPACITY_TYPE] == "on-demand"


def test_a_pool_whose_autoscaler_does_not_deliver_is_given_up_after_the_provisioning_timeout(
        harness: Harness, node_pools: NodePools) -> None:
    # A pool Karpenter does not manage (its nodes would come from a cluster-autoscaler node group that never
    # scales here): no word from any autoscaler, so only the pool's provisioning timeout moves its worker.
    spot = node_pools.create("spot", "spot", zones=("us-east-1a",))
    on_demand = node_pools.create("od", "on-demand")
    harness.start_operator()
    manifest = harness.job_manifest(min_nodes=1, max_nodes=2, pools=[
        karpenter_pool("spot", spot, "spot"),
        {"name": "asg-spot", "capacityType": "spot", "zones": ["us-east-1c"], "provisioningTimeout": "15s",
         "nodeSelector": {"eks.amazonaws.com/nodegroup": f"{spot}-asg"}},
        karpenter_pool("on-demand", on_demand, "on-demand")])
    del manifest["spec"]["fallback"]
    harness.create_job(manifest)

    wait_for("2 workers in us-east-1a", lambda: len(ws := harness.running_workers()) == 2 and all(
        w.metadata.annotations[wk.ZONE] == "us-east-1a" for w in ws), timeout=PROVISIONING)
    assert any("asg-spot/us-east-1c" in m for m in _events(harness, "ProvisioningTimeout"))
    assert "asg-spot/us-east-1c" in harness.status()["cooldowns"]
    assert not _events(harness, "CapacityUnavailable")


def test_a_zone_whose_nodepool_limit_karpenter_reports_is_replaced_before_the_provisioning_timeout(
        harness: Harness, node_pools: NodePools) -> None:
    # 4 CPUs left in us-east-1a: enough for the worker's request of 2 (so the operator places one there), too
    # little for any instance type (8 CPUs), so Karpenter refuses: "all available instance types exceed limits for
    # nodepool" on the pod. Only that word can explain a move: the provisioning timeout is 10 minutes.
    spot_a = node_pools.create("spot-a", "spot", zones=("us-east-1a",), limits={"cpu": "4"})
    spot_b = node_pools.create("spot-b", "spot", zones=("us-east-1b",))
    on_demand = node_pools.create("od", "on-demand")
    harness.start_operator()
    manifest = harness.job_manifest(min_nodes=1, max_nodes=2, pools=[
        karpenter_pool("spot-a", spot_a, "spot", provisioningTimeout="10m"),
        karpenter_pool("spot-b", spot_b, "spot", provisioningTimeout="10m"),
        karpenter_pool("on-demand", on_demand, "on-demand")])
    del manifest["spec"]["fallback"]
    harness.create_job(manifest)

    (message,) = wait_for("the operator reads Karpenter's refusal", lambda: _events(harness, "CapacityUnavailable"),
                          timeout=PROVISIONING)
    assert "spot-a/us-east-1a" in message and "exceed limits for nodepool" in message, message
    wait_for("2 workers running in us-east-1b", lambda: len(ws := harness.running_workers()) == 2 and all(
        w.metadata.annotations[wk.ZONE] == "us-east-1b" for w in ws), timeout=PROVISIONING)
    assert "spot-a/us-east-1a" in harness.status()["cooldowns"]
    assert not _events(harness, "ProvisioningTimeout")
    assert not node_pools.node_claims(spot_a)


def test_nodepool_limits_fallback_after_the_delay_and_back_to_spot_without_flapping(
        harness: Harness, node_pools: NodePools) -> None:
    # One node per spot NodePool: a third worker finds spot exhausted in both zones. (A node limit: KWOK's provider
    # gives a node the capacity its pods requested, so NodePool usage in CPUs says little about the next node.)
    spot_a = node_pools.create("spot-a", "spot", zones=("us-east-1a",), limits={"nodes": "1"})
    spot_b = node_pools.create("spot-b", "spot", zones=("us-east-1b",), limits={"nodes": "1"})
    on_demand = node_pools.create("od", "on-demand")
    harness.start_operator()
    manifest = harness.job_manifest(min_nodes=1, max_nodes=3, pools=[
        karpenter_pool("spot-a", spot_a, "spot"), karpenter_pool("spot-b", spot_b, "spot"),
        karpenter_pool("on-demand", on_demand, "on-demand")])
    manifest["spec"]["elastic"]["targetNodes"] = 2
    manifest["spec"]["fallback"] = {"pool": "on-demand", "after": "20s", "maxNodes": 3}
    harness.create_job(manifest)
    # Karpenter checks limits against usage before a batch, not within one: the third worker asks only once the
    # NodePools show their one node each.
    wait_for("2 spot workers and both NodePools at their limit", lambda: harness.status().get("readyWorkers") == 2
             and all(node_pools.usage(n).get("nodes") == "1" for n in (spot_a, spot_b)), timeout=PROVISIONING)
    harness.patch_job("job", {"spec": {"elastic": {"targetNodes": 3}}})

    pending_since = _time(wait_for("spot short (pendingSince)", lambda: harness.status().get("pendingSince"),
                                   timeout=PROVISIONING))
    wait_for("3 ready, one on on-demand", lambda: harness.status().get("readyWorkers") == 3, timeout=PROVISIONING)
    (fallback,) = [w for w in harness.running_workers() if w.metadata.labels[wk.POOL_LABEL] == "on-demand"]
    assert fallback.metadata.creation_timestamp >= pending_since + datetime.timedelta(seconds=20)
    assert len(_events(harness, "FallbackToOnDemand")) == 1

    node_pools.set_limits(spot_b, {"nodes": "2"})
    wait_for("all workers on spot", lambda: len(ws := harness.running_workers()) == 3 and all(
        w.metadata.labels[wk.POOL_LABEL] != "on-demand" for w in ws), timeout=PROVISIONING)
    assert _events(harness, "SpotProbe") and _events(harness, "ReturnToSpot")
    assert len(_events(harness, "FallbackToOnDemand")) == 1
    on_demand_joins = [m for m in _events(harness, "ScaleUp") if "on-demand/" in m]
    assert len(on_demand_joins) == 1, on_demand_joins


def test_consolidation_is_vetoed_and_a_forced_disruption_is_drained_with_a_checkpoint(
        harness: Harness, node_pools: NodePools) -> None:
    spot = node_pools.create("spot", "spot", consolidate_after="0s")
    on_demand = node_pools.create("od", "on-demand", consolidate_after="0s")
    harness.start_operator()
    with FakeTrainerEndpoints(harness) as endpoints:
        harness.create_job(harness.job_manifest(min_nodes=1, max_nodes=2, pools=[
            karpenter_pool("spot", spot, "spot"), karpenter_pool("on-demand", on_demand, "on-demand")]))
        wait_for("2 ready workers", lambda: harness.status().get("readyWorkers") == 2, timeout=PROVISIONING)
        workers = harness.running_workers()
        (store,) = harness.pods("rendezvous")
        guarded = {w.spec.node_name for w in workers} | {store.spec.node_name}

        def blocked() -> set[str]:
            events = harness.core.list_event_for_all_namespaces(field_selector="reason=DisruptionBlocked").items
            return {e.involved_object.name for e in events if "do-not-disrupt" in (e.message or "")}

        # Karpenter looked at every node for consolidation and was refused by the annotation on our pods.
        wait_for("consolidation blocked on the training and rendezvous nodes", lambda: guarded <= blocked(),
                 timeout=PROVISIONING)
        assert sorted(w.metadata.name for w in harness.running_workers()) == sorted(w.metadata.name for w in workers)

        victim = workers[0]
        (claim,) = [c for c in node_pools.node_claims(spot) if c["status"].get("nodeName") == victim.spec.node_name]
        harness.custom.delete_cluster_custom_object(*KARPENTER, "nodeclaims", claim["metadata"]["name"])
        wait_for("the node tainted karpenter.sh/disrupted", lambda: any(
            t.key == wk.KARPENTER_DISRUPTED for t in (_node(harness, victim.spec.node_name).spec.taints or [])))
        status = wait_for("the preemption counted", lambda: (s := harness.status()).get("preemptions") == 1 and s,
                          timeout=PROVISIONING)
        assert endpoints.requests.get(victim.metadata.name), "no checkpoint was requested before the drain"
        assert _events(harness, "InterruptionNotice")
        assert status["preemptionsByPool"] == {f"spot/{victim.metadata.annotations[wk.ZONE]}": 1}


def test_two_jobs_and_a_large_pod_never_overcommit_a_node(harness: Harness) -> None:
    full = harness.add_node("spot-cpu", "us-east-1a")
    free = harness.add_node("spot-cpu", "us-east-1b")
    stable = harness.add_node("on-demand", "us-east-1a")
    harness.wait_nodes_ready([full, free, stable])
    big = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big", "namespace": harness.namespace},
           "spec": {"nodeName": full, "containers": [{"name": "c", "image": "x",
                                                      "resources": {"requests": {"cpu": "7"}}}]}}
    harness.core.create_namespaced_pod(harness.namespace, big)
    wait_for("the large pod running", lambda: harness.core.read_namespaced_pod("big", harness.namespace).status.phase
             == "Running")
    harness.start_operator()
    for name in ("one", "two"):
        manifest = harness.job_manifest(name, min_nodes=1, max_nodes=1)
        # Each worker needs 5 of the 8 CPUs: the free node holds one, the node with the large pod none.
        manifest["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "5"}}
        del manifest["spec"]["fallback"]
        harness.create_job(manifest)

    def running() -> list[client.V1Pod]:
        return [p for job in ("one", "two") for p in harness.running_workers(job)]

    wait_for("one worker running", lambda: len(running()) == 1)
    (winner,) = running()
    loser = "two" if winner.metadata.labels[wk.JOB_LABEL] == "one" else "one"
    wait_for("the other job reports no free node", lambda: "no free node" in str(harness.status(loser)))
    assert winner.spec.node_name == free
    for job in ("one", "two"):
        assert all(p.spec.node_name != full for p in harness.pods("worker", job))


def test_the_eks_karpenter_example_starts_from_zero_nodes(harness: Harness, karpenter: Karpenter) -> None:
    manifest = yaml.safe_load((REPO / "examples" / "eks-karpenter.yaml").read_text())
    manifest["metadata"]["namespace"] = harness.namespace
    harness.core.create_namespaced_service_account(harness.namespace, {"metadata": {"name": "trainer-s3"}})
    karpenter.cluster.kubectl("apply", "--server-side", "-f", str(NODE_POOLS))
    try:
        harness.start_operator()
        harness.create_job(manifest)
        name = manifest["metadata"]["name"]
        status = wait_for("Running with all 8 workers ready", lambda: (s := harness.status(name)).get(
            "readyWorkers") == 8 and s.get("phase") == "Running" and s, timeout=PROVISIONING)
        workers = harness.running_workers(name)
        # zones: Pack keeps the job in one zone; the spot pools take every worker (weight and maxNodes).
        assert len({w.metadata.annotations[wk.ZONE] for w in workers}) == 1
        assert {w.metadata.labels[wk.POOL_LABEL] for w in workers} <= {"p4d-spot", "p5-spot"}
        assert status["workers"]["byCapacityType"] == {"spot": 8}
        # Every worker's node is one Karpenter launched for it: a NodeClaim of gpu-spot names it.
        claimed = {c["status"].get("nodeName") for c in harness.custom.list_cluster_custom_object(
            *KARPENTER, "nodeclaims", label_selector=f"{wk.KARPENTER_NODEPOOL}=gpu-spot")["items"]}
        assert {w.spec.node_name for w in workers} <= claimed
        for w in workers:
            labels = _node(harness, w.spec.node_name).metadata.labels
            assert labels[wk.KARPENTER_NODEPOOL] == "gpu-spot" and labels[wk.KARPENTER_CAPACITY_TYPE] == "spot"
    finally:
        harness.custom.delete_collection_namespaced_custom_object(wk.GROUP, wk.VERSION, harness.namespace, wk.PLURAL)
        karpenter.cluster.kubectl("delete", "-f", str(NODE_POOLS), "--wait=false")


def test_the_return_to_spot_probe_passes_restricted_pod_security(devcluster: DevCluster, namespace: str,
                                                                 core: client.CoreV1Api) -> None:
    core.patch_namespace(namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted",
                                                             "pod-security.kubernetes.io/enforce-version": "latest"}}})
    job = JobRef("a-rather-long-job-name.with.dots-" + "x" * 80, namespace, str(uuid.uuid4()))
    probe = render_probe(job, Choice("spot", "us-east-1a"), 12, 3, {wk.KARPENTER_NODEPOOL: "spot"},
                         [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                         {"cpu": Decimal(2), "nvidia.com/gpu": Decimal(1)})
    # The owner does not exist: only admission is under test (the API server would otherwise accept the reference).
    probe["metadata"].pop("ownerReferences")
    created = core.create_namespaced_pod(namespace, probe, dry_run="All")
    assert created.metadata.name == probe["metadata"]["name"]
