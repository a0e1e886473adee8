"""Acting on the warning: every interruption source injected on a KWOK node, against the operator process.

The workers' control endpoints are stand-ins bound on the pod IPs (FakeTrainerEndpoints); the real trainer's
side of the protocol is covered by the trainer and end-to-end tests.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

from spotrain_dev.testing import ZONES, FakeTrainerEndpoints, Harness, wait_for
from spotrain_operator import wellknown as wk


def _start(harness: Harness, workers: int = 2, spare_zone: str = "us-east-1c", **spec: Any) -> list[str]:
    """A job of ``workers`` workers in zones a, b(, ...), one spare spot node for the replacement, and the
    operator; returns the worker nodes."""
    nodes = [harness.add_node("spot-cpu", ZONES[i % 2]) for i in range(workers)]
    spare = harness.add_node("spot-cpu", spare_zone)
    stable = harness.add_node("on-demand", "us-east-1a")
    harness.wait_nodes_ready([*nodes, spare, stable])
    manifest = harness.job_manifest(min_nodes=1, max_nodes=workers, **spec)
    manifest["spec"]["elastic"]["scaleUpWindow"] = "2s"
    del manifest["spec"]["fallback"]
    # Keep the spare free until the notice: the job asks for exactly the starting workers' nodes.
    harness.nodes.taint(spare, "test.spotrain.dev/spare", "true")
    harness.start_operator()
    harness.create_job(manifest)
    wait_for(f"{workers} workers", lambda: harness.status().get("readyWorkers") == workers)
    harness.nodes.api.patch_node(spare, {"spec": {"taints": []}})
    return nodes


def _worker_on(harness: Harness, node: str) -> str:
    return next(p.metadata.name for p in harness.pods("worker") if p.spec.node_name == node)


NOTICES = ["nth-spot-itn", "nth-asg-lifecycle", "nth-scheduled-maintenance", "karpenter", "karpenter-v1beta1",
           "gke-impending", "aks-drain", "ca-scale-down", "spotrain-agent"]


@pytest.mark.parametrize("signal", NOTICES)
def test_notice_checkpoints_drains_and_replaces(harness: Harness, signal: str) -> None:
    with FakeTrainerEndpoints(harness, delay=1.0) as trainers:
        nodes = _start(harness)
        doomed_node = nodes[0]
        doomed = _worker_on(harness, doomed_node)
        wait_for("endpoints up", lambda: len(trainers.serving) == 2)
        harness.nodes.signal(doomed_node, signal, lead_seconds=120)

        status = wait_for("drain recorded", lambda: (s := harness.status()).get("drains") and s)
        drain = status["drains"][doomed_node]
        deadline = datetime.datetime.fromisoformat(drain["deadline"].replace("Z", "+00:00"))
        wait_for("checkpoint requested from every rank", lambda: all(trainers.requests.get(p) for p in
                                                                     [w.metadata.name for w in harness.pods()]))
        assert {r["id"] for reqs in trainers.requests.values() for r in reqs} == {drain["requestID"]}
        wait_for("doomed worker gone", lambda: harness.gone(doomed))
        assert datetime.datetime.now(datetime.UTC) < deadline
        status = wait_for("replacement running", lambda: (s := harness.status()).get("readyWorkers") == 2 and s)
        assert status["preemptions"] == 1 and status["failures"] == 0
        assert all(w.spec.node_name != doomed_node for w in harness.running_workers())
        assert harness.events("InterruptionNotice") and harness.events("WorkerPreempted")
        node = harness.core.read_node(doomed_node)
        assert node.metadata.annotations.get(wk.NODE_DRAINED_ANNOTATION) == "true"


@pytest.mark.parametrize("signal", ["not-ready", "delete", "gke-shutdown"])
def test_dead_node_is_a_preemption_and_is_replaced(harness: Harness, signal: str) -> None:
    nodes = _start(harness)
    doomed = _worker_on(harness, nodes[0])
    harness.nodes.signal(nodes[0], signal)
    status = wait_for("preemption counted", lambda: (s := harness.status()).get("preemptions") == 1 and s)
    assert status["failures"] == 0
    wait_for("doomed worker gone", lambda: harness.gone(doomed))
    wait_for("replacement running", lambda: harness.status().get("readyWorkers") == 2)


def test_duplicate_and_flapping_signals_cause_one_drain(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness, delay=3.0) as trainers:
        nodes = _start(harness)
        wait_for("endpoints up", lambda: len(trainers.serving) == 2)
        original = set(trainers.serving)
        harness.nodes.signal(nodes[0], "karpenter")
        harness.nodes.signal(nodes[0], "nth-spot-itn")
        wait_for("request sent", lambda: any(trainers.requests.values()))
        harness.nodes.api.patch_node(nodes[0], {"spec": {"taints": []}})  # the signal flaps off...
        harness.nodes.signal(nodes[0], "karpenter")  # ...and on again
        wait_for("replacement running", lambda: (s := harness.status()).get("readyWorkers") == 2
                 and s.get("preemptions") == 1)
        harness.wait_reconciles()
        assert {p: len(trainers.requests[p]) for p in original} == dict.fromkeys(original, 1), trainers.requests
        assert harness.status()["preemptions"] == 1
        assert len(harness.events("InterruptionNotice")) == 1


def test_unreachable_endpoint_evicts_at_once(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness) as trainers:
        nodes = _start(harness, termination={"safetyMargin": "10s"})
        doomed = _worker_on(harness, nodes[0])
        trainers.unreachable.add(doomed)
        started = time.monotonic()
        harness.nodes.signal(nodes[0], "nth-spot-itn", lead_seconds=600)
        wait_for("doomed worker evicted", lambda: harness.gone(doomed))
        # Far from the 590 s the deadline would allow: the operator did not wait for an answer that cannot come.
        assert time.monotonic() - started < 120


def test_notice_for_a_node_without_workers_does_nothing(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness) as trainers:
        _start(harness)
        idle = harness.add_node("spot-cpu", "us-east-1b")
        harness.nodes.signal(idle, "karpenter")
        harness.wait_reconciles()
        assert not any(trainers.requests.values())
        status = harness.status()
        assert not status.get("drains") and status["preemptions"] == 0


def test_a_zone_burst_is_one_checkpoint_and_one_rescale(harness: Harness) -> None:
    # The checkpoint takes 3 s, so the second notice arrives while it is in flight even on a loaded machine.
    with FakeTrainerEndpoints(harness, delay=3.0) as trainers:
        nodes = [harness.add_node("spot-cpu", z) for z in ("us-east-1a", "us-east-1a", "us-east-1b")]
        stable = harness.add_node("on-demand", "us-east-1b")
        harness.wait_nodes_ready([*nodes, stable])
        manifest = harness.job_manifest(min_nodes=1, max_nodes=3)
        del manifest["spec"]["fallback"]
        harness.start_operator()
        harness.create_job(manifest)
        wait_for("3 workers", lambda: harness.status().get("readyWorkers") == 3)
        wait_for("endpoints up", lambda: len(trainers.serving) == 3)
        for node in nodes[:2]:  # zone a goes at once
            harness.nodes.signal(node, "nth-spot-itn")
        wait_for("both drained", lambda: (s := harness.status()).get("preemptions") == 2 and s)
        (request_id,) = {r["id"] for reqs in trainers.requests.values() for r in reqs}
        assert all(len(reqs) == 1 for reqs in trainers.requests.values())
        # The two notices may land in one reconcile or in two; either way they name the one checkpoint request.
        notices = [e.message for e in harness.events("InterruptionNotice")]
        assert all(request_id in m for m in notices) and all(n in " ".join(notices) for n in nodes[:2]), notices
        wait_for("survivor alone", lambda: len(harness.running_workers()) == 1)


def test_operator_restarted_mid_drain_finishes_it_once(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness, delay=8.0) as trainers:
        nodes = _start(harness)
        doomed = _worker_on(harness, nodes[0])
        wait_for("endpoints up", lambda: len(trainers.serving) == 2)
        harness.nodes.signal(nodes[0], "karpenter")
        wait_for("request sent", lambda: trainers.requests.get(doomed))
        harness.kill(harness.operators[0])
        harness.start_operator()
        wait_for("doomed worker gone", lambda: harness.gone(doomed))
        wait_for("replacement running", lambda: harness.status().get("readyWorkers") == 2)
        assert harness.status()["preemptions"] == 1
        assert len(trainers.requests[doomed]) == 1
        assert len(harness.events("WorkerPreempted")) == 1


def test_rebalance_is_acted_on_only_when_asked(harness: Harness) -> None:
    with FakeTrainerEndpoints(harness) as trainers:
        nodes = _start(harness)
        harness.nodes.signal(nodes[0], "nth-rebalance")
        harness.wait_reconciles()
        assert not any(trainers.requests.values())
        harness.patch_job("job", {"spec": {"termination": {"proactiveOnRebalance": True}}})
        wait_for("proactive drain", lambda: harness.status().get("preemptions") == 1)


@pytest.mark.parametrize("reason", ["EvictionByEvictionAPI", "DeletionByTaintManager", "PreemptionByScheduler"])
def test_pod_disruption_target_is_a_notice(harness: Harness, reason: str) -> None:
    with FakeTrainerEndpoints(harness, delay=1.0) as trainers:
        nodes = _start(harness)
        doomed = _worker_on(harness, nodes[0])
        wait_for("endpoints up", lambda: len(trainers.serving) == 2)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # What the API server writes on a pod that is about to be evicted, preempted or taint-deleted.
        harness.core.patch_namespaced_pod_status(doomed, harness.namespace, {"status": {"conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": reason, "lastTransitionTime": now}]}})
        wait_for("checkpoint requested", lambda: trainers.requests.get(doomed))
        wait_for("doomed worker gone", lambda: harness.gone(doomed))
        status = wait_for("replacement running", lambda: (s := harness.status()).get("readyWorkers") == 2 and s)
        assert status["preemptions"] == 1 and status["failures"] == 0
