"""What real clusters send, against the operator process: stored status that really forgets, evictions the API
refuses, names with dots, invalid specs that must not flood the API, refused creates, rendezvous stores that move
before their node goes, and a whole zone lost under several jobs."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from typing import Any

from kubernetes import client

from spotrain_dev.processes import free_port
from spotrain_dev.testing import ZONES, FakeTrainerEndpoints, Harness, wait_for
from spotrain_operator import wellknown as wk


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def _metric(port: int, name: str, labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _start(harness: Harness, name: str = "job", workers: int = 2, **spec: Any) -> list[str]:
    nodes = [harness.add_node("spot-cpu", ZONES[i % 3]) for i in range(workers + 1)]
    stable = [harness.add_node("on-demand", ZONES[0]), harness.add_node("on-demand", ZONES[1])]
    harness.wait_nodes_ready([*nodes, *stable])
    manifest = harness.job_manifest(name, min_nodes=1, max_nodes=workers, **spec)
    manifest["spec"]["elastic"]["scaleUpWindow"] = "2s"
    del manifest["spec"]["fallback"]
    manifest["spec"]["rendezvous"] = {"pool": "on-demand"}
    if not harness.operators:
        harness.start_operator()
    harness.create_job(manifest)
    wait_for(f"{workers} workers of {name}", lambda: harness.status(name).get("readyWorkers") == workers)
    return nodes


def test_a_finished_drain_leaves_the_stored_status(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness, delay=1.0) as trainers:
        _start(harness)
        wait_for("endpoints up", lambda: len(trainers.serving) == 2)
        doomed = harness.running_workers()[0]
        harness.nodes.signal(doomed.spec.node_name, "karpenter")
        wait_for("drain recorded", lambda: doomed.spec.node_name in (harness.status().get("drains") or {}))
        wait_for("doomed worker gone", lambda: harness.gone(doomed.metadata.name))
        # The drain is removed from the stored object, not only from what the operator computes.
        wait_for("drain forgotten", lambda: not harness.status().get("drains"))
        node = harness.core.read_node(doomed.spec.node_name)
        assert node.metadata.annotations.get(wk.NODE_DRAINED_ANNOTATION) == "true"


def test_an_eviction_refused_for_two_disruption_budgets_still_drains(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness, delay=1.0) as trainers:
        _start(harness)
        wait_for("endpoints up", lambda: len(trainers.serving) == 2)
        policy = client.PolicyV1Api(harness.api)
        for i in range(2):  # two budgets over one pod: the Eviction API answers 500 and will not choose
            policy.create_namespaced_pod_disruption_budget(harness.namespace, client.V1PodDisruptionBudget(
                metadata=client.V1ObjectMeta(name=f"pdb-{i}"),
                spec=client.V1PodDisruptionBudgetSpec(max_unavailable=1, selector=client.V1LabelSelector(
                    match_labels={wk.ROLE_LABEL: "worker"}))))
        doomed = harness.running_workers()[0]
        harness.nodes.signal(doomed.spec.node_name, "karpenter")
        wait_for("doomed worker gone", lambda: harness.gone(doomed.metadata.name))
        status = wait_for("replacement running", lambda: (s := harness.status()).get("readyWorkers") == 2 and s)
        assert status["preemptions"] == 1 and status["failures"] == 0


def test_a_job_named_with_dots_runs(harness: Harness) -> None:
    _start(harness, name="llama-3.1-ft")
    status = harness.status("llama-3.1-ft")
    assert status["phase"] in ("Running", "Rescaling") and status["readyWorkers"] == 2


def test_an_invalid_spec_gets_one_condition_and_one_event(harness: Harness) -> None:
    port = free_port()
    harness.start_operator("--metrics-port", str(port))
    manifest = harness.job_manifest()
    manifest["spec"]["placement"]["pricingConfigMap"] = "missing-prices"
    harness.create_job(manifest)
    condition = wait_for("SpecInvalid", lambda: _condition(harness.status(), "SpecInvalid"))
    assert "spec.placement.pricingConfigMap" in condition["message"]
    # The operator looked at the job again several times (--resync 2), a positive sign that passes happened.
    seen = _metric(port, "spotrain_reconciles_total", 'result="invalid"')
    wait_for("more passes", lambda: _metric(port, "spotrain_reconciles_total", 'result="invalid"') >= seen + 3,
             timeout=60)
    assert len(harness.events("InvalidSpec")) == 1
    again = _condition(harness.status(), "SpecInvalid")
    assert again["lastTransitionTime"] == condition["lastTransitionTime"]


def test_creates_the_api_refuses_are_reported_on_the_job(harness: Harness) -> None:
    nodes = [harness.add_node("spot-cpu", z) for z in ZONES[:2]]
    stable = harness.add_node("on-demand", ZONES[0])
    harness.wait_nodes_ready([*nodes, stable])
    # A quota that admits the rendezvous pod and no worker: every worker create is refused (403).
    harness.core.create_namespaced_resource_quota(harness.namespace, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="one-pod"), spec=client.V1ResourceQuotaSpec(hard={"pods": "1"})))
    wait_for("quota counted", lambda: harness.core.read_namespaced_resource_quota("one-pod", harness.namespace)
             .status.hard)
    harness.start_operator()
    harness.create_job(harness.job_manifest(min_nodes=1, max_nodes=2))
    condition = wait_for("ReconcileError", lambda: (c := _condition(harness.status(), "ReconcileError"))
                         .get("status") == "True" and c)
    assert "refused by the API" in condition["message"] and "CreatePod" in condition["message"]
    assert len(harness.events("ReconcileError")) >= 1


def _same_workers_move_the_store(harness: Harness, trainers: FakeTrainerEndpoints,
                                 disturb: Callable[[str], object]) -> None:
    """The store's node is disturbed (a notice, a cordon): a new store starts on another node, the same worker pods
    re-join it (told through POST /rendezvous, relabelled to round 2 once their trainers report the new round), and
    the old store goes once they have. Nothing is preempted, replaced or failed."""
    _start(harness)
    wait_for("endpoints up", lambda: len(trainers.serving) == 2)
    (old_store,) = harness.pods("rendezvous")
    store_node = old_store.spec.node_name
    workers_before = {p.metadata.name: p.metadata.uid for p in harness.running_workers()}
    disturb(store_node)
    wait_for("checkpoint requested from every worker", lambda: all(trainers.requests.get(w) for w in workers_before))
    wait_for("round 2", lambda: harness.status().get("rendezvous", {}).get("round") == 2)
    new_store = wait_for("new store running elsewhere", lambda: [
        p for p in harness.pods("rendezvous") if p.metadata.name != old_store.metadata.name
        and p.status.phase == "Running" and p.spec.node_name and p.spec.node_name != store_node])
    new_ip = new_store[0].status.pod_ip
    moves = wait_for("every worker told where the store went", lambda: all(
        trainers.moves.get(w) for w in workers_before) and trainers.moves)
    assert {m[-1]["endpoint"] for m in moves.values()} == {f"{new_ip}:29400"}
    wait_for("the same workers in round 2", lambda: {
        p.metadata.name: p.metadata.uid for p in harness.running_workers()
        if p.metadata.labels[wk.ROUND_LABEL] == "2"} == workers_before)
    wait_for("old store gone", lambda: harness.gone(old_store.metadata.name), timeout=120)
    wait_for("move over", lambda: "movingFrom" not in harness.status().get("rendezvous", {}))
    status = harness.status()
    assert status["readyWorkers"] == 2 and status["preemptions"] == 0 and status["failures"] == 0
    assert {p.metadata.name for p in harness.pods("worker")} == set(workers_before), "no worker was replaced"
    assert harness.events("RendezvousMoved") and not harness.events("RendezvousLost")


def test_a_notice_on_the_store_node_moves_the_store_before_the_node_goes(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness, delay=1.0) as trainers:
        _same_workers_move_the_store(harness, trainers, lambda node: harness.nodes.signal(node, "karpenter"))


def test_a_cordoned_store_node_moves_the_store(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness, delay=1.0) as trainers:
        _same_workers_move_the_store(
            harness, trainers, lambda node: harness.core.patch_node(node, {"spec": {"unschedulable": True}}))


def test_every_job_comes_back_after_a_zone_loss(harness: Harness) -> None:
    """The 500-node zone-loss benchmark at a size the suite affords: three jobs spread over three zones, their
    stores together in one zone, and that zone lost at once."""
    spot = [harness.add_node("spot-cpu", z) for z in ZONES for _ in range(2)]
    stable = [harness.add_node("on-demand", z) for z in ZONES]
    harness.wait_nodes_ready([*spot, *stable])
    harness.start_operator()
    jobs = [f"job-{i}" for i in range(3)]
    for name in jobs:
        manifest = harness.job_manifest(name, min_nodes=2, max_nodes=3)
        manifest["spec"]["elastic"]["scaleUpWindow"] = "2s"
        del manifest["spec"]["fallback"]
        harness.create_job(manifest)
    wait_for("every job at 3", lambda: all(harness.status(name).get("readyWorkers") == 3 for name in jobs),
             timeout=120)
    lost_zone = ZONES[0]
    lost = [n for n in [*spot, *stable] if harness.node_zone(n) == lost_zone]
    serial_before = {name: harness.status(name)["podSerial"] for name in jobs}
    for name in lost:
        harness.nodes.remove(name)

    def back() -> bool:
        for name in jobs:
            status = harness.status(name)
            # Two spot nodes are left in each of the two other zones: room for three workers of every job.
            if status.get("readyWorkers") != 3 or status.get("podSerial", 0) <= serial_before[name]:
                return False
        pods = harness.core.list_namespaced_pod(harness.namespace).items
        return not any(p.spec.node_name in lost for p in pods)

    wait_for("every job back, nothing left on the lost nodes", back, timeout=180)
    for name in jobs:
        (store,) = [p for p in harness.pods("rendezvous", name) if not p.metadata.deletion_timestamp]
        assert harness.node_zone(store.spec.node_name) != lost_zone
