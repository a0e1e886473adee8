"""The operator as a real process against the devcluster: placement, zone loss, fallback, batching, restarts,
invalid updates and clean deletion."""

from __future__ import annotations

import collections
import json
import time
import urllib.request
from typing import Any

from kubernetes.client.rest import ApiException

from spotrain_dev.processes import free_port
from spotrain_dev.testing import ZONES, Harness, wait_for
from spotrain_operator import wellknown as wk


def _condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def _two_workers_running(harness: Harness, **spec: Any) -> None:
    nodes = [harness.add_node("spot-cpu", z) for z in ZONES[:2]]
    stable = harness.add_node("on-demand", "us-east-1a")
    harness.wait_nodes_ready([*nodes, stable])
    harness.start_operator()
    harness.create_job(harness.job_manifest(min_nodes=1, max_nodes=2, **spec))
    wait_for("2 workers", lambda: harness.status().get("readyWorkers") == 2)


def _container_exits(harness: Harness, pod: str, exit_code: int, message: str = "") -> None:
    """What kubelet reports when the trainer's container exits (with its termination message)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "startedAt": now,
                  "finishedAt": now, "message": message}
    harness.core.patch_namespaced_pod_status(pod, harness.namespace, {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [{"name": "trainer", "image": "x", "ready": False, "restartCount": 0,
                               "state": {"terminated": terminated}}]}})


def test_job_comes_up_spread_over_zones(harness: Harness) -> None:
    spot = [harness.add_node("spot-cpu", zone) for zone in ZONES]
    stable = harness.add_node("on-demand", ZONES[0])
    harness.wait_nodes_ready([*spot, stable])
    metrics_port = free_port()
    harness.start_operator("--metrics-port", str(metrics_port))
    harness.create_job(harness.job_manifest(min_nodes=2, max_nodes=3))

    status = wait_for("job Running with 3 ready workers",
                      lambda: (s := harness.status()).get("phase") == "Running" and s.get("readyWorkers") == 3 and s)
    workers = harness.running_workers()
    assert len(workers) == 3
    assert sorted(harness.node_zone(w.spec.node_name) for w in workers) == sorted(ZONES)
    assert status["workers"]["byZone"] == dict.fromkeys(ZONES, 1)
    assert status["workers"]["byCapacityType"] == {"spot": 3}
    assert status["workersSummary"] == "3/3"
    assert status["worldSize"] == 3
    assert _condition(status, "Ready")["status"] == "True"

    (store,) = harness.pods("rendezvous")
    assert store.spec.node_name == stable, "the rendezvous must sit on stable (on-demand) capacity"
    service = harness.core.read_namespaced_service("job-rdzv", harness.namespace)
    # The Service selects the current round's store alone (a moving store has two pods for a while).
    assert service.spec.selector == {wk.JOB_LABEL: "job", wk.ROLE_LABEL: "rendezvous", wk.ROUND_LABEL: "1"}

    worker = workers[0]
    env = {e.name: e.value for e in worker.spec.containers[0].env if e.value is not None}
    assert env["SPOTRAIN_RDZV_ENDPOINT"] == f"job-rdzv.{harness.namespace}.svc:29400"
    assert env["SPOTRAIN_RDZV_ID"] == status["rendezvous"]["id"]
    assert (env["SPOTRAIN_MIN_NODES"], env["SPOTRAIN_MAX_NODES"]) == ("2", "3")
    assert worker.metadata.owner_references[0].kind == "SpotTrainingJob"
    assert worker.metadata.name.endswith("-g1")

    row = harness.cluster.kubectl("get", "stj", "job", "-n", harness.namespace, "--no-headers").split()
    assert row[1:5] == ["Running", "3/3", "2", "3"]
    assert harness.events("ScaleUp")

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert f'spotrain_workers{{capacity_type="spot",job="job",namespace="{harness.namespace}"' in text
    assert "spotrain_reconcile_duration_seconds_count" in text


def test_zone_loss_replacements_land_elsewhere_with_cooldown(harness: Harness) -> None:
    zone_a = [harness.add_node("spot-cpu", "us-east-1a") for _ in range(2)]
    others = [harness.add_node("spot-cpu", "us-east-1b"), harness.add_node("spot-cpu", "us-east-1c")]
    stable = harness.add_node("on-demand", "us-east-1b")
    harness.wait_nodes_ready([*zone_a, *others, stable])
    harness.start_operator()
    manifest = harness.job_manifest(min_nodes=2, max_nodes=3, placement={
        "zones": "Spread", "cooldown": "10m",
        "pools": [harness.pool("spot-cpu", "spot"), harness.pool("on-demand", "on-demand")]})
    del manifest["spec"]["fallback"]
    harness.create_job(manifest)
    wait_for("3 workers", lambda: harness.status().get("readyWorkers") == 3)

    for node in zone_a:
        harness.nodes.remove(node)
    # The worker of zone a is gone; the survivors keep the job at >= min and no replacement fits yet.
    status = wait_for("the preemption recorded", lambda: (s := harness.status()).get("preemptions") == 1 and s)
    assert status["preemptionsByPool"] == {"spot-cpu/us-east-1a": 1}
    assert "spot-cpu/us-east-1a" in status["cooldowns"]
    assert len(harness.running_workers()) == 2

    # Capacity comes back in the cooled-down zone and in another one: the replacement avoids zone a.
    fresh_a = harness.add_node("spot-cpu", "us-east-1a")
    fresh_b = harness.add_node("spot-cpu", "us-east-1b")
    harness.wait_nodes_ready([fresh_a, fresh_b])
    wait_for("3 workers again", lambda: len(harness.running_workers()) == 3 and harness.status()["readyWorkers"] == 3)
    nodes = {w.spec.node_name for w in harness.running_workers()}
    assert fresh_b in nodes and fresh_a not in nodes
    assert all(harness.node_zone(n) != "us-east-1a" for n in nodes)
    assert harness.events("WorkerPreempted")


def test_fallback_to_on_demand_and_back_to_spot(harness: Harness) -> None:
    spot = harness.add_node("spot-cpu", "us-east-1a")
    on_demand = [harness.add_node("on-demand", "us-east-1a"), harness.add_node("on-demand", "us-east-1b")]
    harness.wait_nodes_ready([spot, *on_demand])
    harness.start_operator()
    harness.create_job(harness.job_manifest(min_nodes=1, max_nodes=2))

    wait_for("a worker on the on-demand fallback", lambda: any(
        w.metadata.labels[wk.POOL_LABEL] == "on-demand" for w in harness.running_workers()), timeout=60)
    status = harness.status()
    assert _condition(status, "FallbackActive")["status"] == "True"
    assert harness.events("FallbackToOnDemand")
    wait_for("2 ready", lambda: harness.status().get("readyWorkers") == 2)

    spot_back = harness.add_node("spot-cpu", "us-east-1b")
    harness.wait_nodes_ready([spot_back])
    wait_for("both workers on spot", lambda: sorted(
        w.metadata.labels[wk.POOL_LABEL] for w in harness.running_workers()) == ["spot-cpu", "spot-cpu"], timeout=60)
    assert harness.events("ReturnToSpot")
    wait_for("fallback over", lambda: _condition(harness.status(), "FallbackActive").get("status") == "False")


def test_joins_are_batched_into_one_scale_change(harness: Harness) -> None:
    first = harness.add_node("spot-cpu", "us-east-1a")
    stable = harness.add_node("on-demand", "us-east-1a")
    harness.wait_nodes_ready([first, stable])
    harness.start_operator()
    manifest = harness.job_manifest(min_nodes=1, max_nodes=6)
    manifest["spec"]["elastic"]["scaleUpWindow"] = "15s"
    del manifest["spec"]["fallback"]
    harness.create_job(manifest)
    wait_for("1 worker", lambda: harness.status().get("readyWorkers") == 1)
    assert len(harness.events("ScaleUp")) == 1

    joined = []
    for i in range(5):
        joined.append(harness.add_node("spot-cpu", ZONES[i % 3]))
        time.sleep(0.5)
    harness.wait_nodes_ready(joined)
    wait_for("6 workers", lambda: harness.status().get("readyWorkers") == 6, timeout=90)
    scale_ups = harness.events("ScaleUp")
    assert len(scale_ups) == 2, [e.message for e in scale_ups]
    assert "1 -> 6" in max(scale_ups, key=lambda e: e.last_timestamp).message


def _workers_and_stores(harness: Harness) -> tuple[list[str], list[str]]:
    return ([p.metadata.name for p in harness.pods("worker") if not p.metadata.deletion_timestamp],
            [p.metadata.name for p in harness.pods("rendezvous") if not p.metadata.deletion_timestamp])


def test_operator_killed_mid_reconcile_and_two_replicas(harness: Harness) -> None:
    nodes = [harness.add_node("spot-cpu", z) for z in ZONES] + [harness.add_node("spot-cpu", "us-east-1a")]
    stable = harness.add_node("on-demand", "us-east-1b")
    harness.wait_nodes_ready([*nodes, stable])
    lease = ("--leader-elect", "--leader-election-namespace", harness.namespace, "--lease-duration", "6",
             "--renew-deadline", "4", "--retry-period", "1")
    first = harness.start_operator(*lease)
    harness.create_job(harness.job_manifest(min_nodes=2, max_nodes=3))
    wait_for("the first pod", lambda: harness.pods("worker") or harness.pods("rendezvous"), interval=0.05)
    harness.kill(first)  # SIGKILL in the middle of bringing the job up

    replicas = [harness.start_operator(*lease), harness.start_operator(*lease)]
    wait_for("3 workers", lambda: harness.status().get("readyWorkers") == 3)
    workers, stores = _workers_and_stores(harness)
    assert len(workers) == 3 and len(set(workers)) == 3
    assert len(stores) == 1

    # Only the leader acts; when it dies the standby takes over and the job is reconciled, not duplicated.
    holder = harness.cluster.kubectl("get", "lease", "spotrain-operator", "-n", harness.namespace,
                                     "-o", "jsonpath={.spec.holderIdentity}")
    leader = next(p for p in replicas if holder.endswith(f"-{p.pid}"))
    harness.kill(leader)
    harness.patch_job("job", {"spec": {"elastic": {"targetNodes": 2}}})
    wait_for("scaled to 2 by the new leader", lambda: len(_workers_and_stores(harness)[0]) == 2, timeout=60)
    harness.wait_reconciles()
    workers, stores = _workers_and_stores(harness)
    assert len(workers) == 2 and len(stores) == 1
    for pod in [*harness.pods("worker"), *harness.pods("rendezvous")]:
        assert pod.metadata.owner_references and pod.metadata.owner_references[0].name == "job"


def test_invalid_updates_get_a_condition_not_a_crash(harness: Harness) -> None:
    nodes = [harness.add_node("spot-cpu", z) for z in ZONES]
    stable = harness.add_node("on-demand", "us-east-1a")
    harness.wait_nodes_ready([*nodes, stable])
    operator = harness.start_operator()
    harness.create_job(harness.job_manifest(min_nodes=2, max_nodes=3))
    wait_for("3 workers", lambda: harness.status().get("readyWorkers") == 3)

    harness.patch_job("job", {"spec": {"elastic": {"maxNodes": 2}}})
    status = wait_for("scaled below the new max", lambda: (s := harness.status()).get("readyWorkers") == 2 and s)
    assert _condition(status, "SpecChange")["reason"] == "MaxBelowWorldSize"
    assert harness.events("MaxBelowWorldSize")

    harness.patch_job("job", {"spec": {"placement": {"pricingConfigMap": "no-such-prices"}}})
    status = wait_for("SpecInvalid", lambda: _condition(s := harness.status(), "SpecInvalid") and s)
    assert "spec.placement.pricingConfigMap" in _condition(status, "SpecInvalid")["message"]
    assert operator.poll() is None, harness.operator_log()

    harness.patch_job("job", {"spec": {"placement": {"pricingConfigMap": None}}})
    wait_for("SpecInvalid cleared", lambda: not _condition(harness.status(), "SpecInvalid"))


def test_deleting_the_job_removes_everything_it_created(harness: Harness) -> None:
    _two_workers_running(harness)

    harness.custom.delete_namespaced_custom_object(wk.GROUP, wk.VERSION, harness.namespace, wk.PLURAL, "job")

    def gone() -> bool:
        pods = harness.core.list_namespaced_pod(harness.namespace).items
        services = harness.core.list_namespaced_service(harness.namespace).items
        return not pods and not services

    wait_for("pods and services garbage-collected", gone, timeout=120)
    try:
        harness.job()
        raise AssertionError("the job still exists")
    except ApiException as e:
        assert e.status == 404


def test_suspend_keeps_nothing_running_and_resume_starts_a_new_round(harness: Harness) -> None:
    _two_workers_running(harness)
    round_before = harness.status()["rendezvous"]["round"]

    harness.patch_job("job", {"spec": {"suspend": True}})
    wait_for("Suspended with no pods", lambda: harness.status().get("phase") == "Suspended"
             and not any(_workers_and_stores(harness)))
    harness.patch_job("job", {"spec": {"suspend": False}})
    status = wait_for("running again", lambda: (s := harness.status()).get("readyWorkers") == 2 and s)
    assert status["rendezvous"]["round"] == round_before + 1
    counts = collections.Counter(p.metadata.labels[wk.ROUND_LABEL] for p in harness.running_workers())
    assert counts == {str(round_before + 1): 2}


def test_trainer_completion_succeeds_the_job_and_ttl_cleans_up(harness: Harness) -> None:
    _two_workers_running(harness, ttlSecondsAfterFinished=3)
    _container_exits(harness, harness.running_workers()[0].metadata.name, 0,
                     json.dumps({"spotrain": "completed", "step": 2000}))
    wait_for("job deleted after its TTL", lambda: not harness.custom.list_namespaced_custom_object(
        wk.GROUP, wk.VERSION, harness.namespace, wk.PLURAL)["items"], timeout=60)
    assert harness.events("Succeeded")


def test_worker_failures_count_against_max_failures_not_preemptions(harness: Harness) -> None:
    _two_workers_running(harness, budgets={"maxFailures": 0})
    _container_exits(harness, harness.running_workers()[0].metadata.name, 1)
    status = wait_for("Failed", lambda: (s := harness.status()).get("phase") == "Failed" and s)
    assert status["failures"] == 1 and status["preemptions"] == 0
    assert _condition(status, "Failed")["reason"] == "BudgetExceeded"
    assert "spec.budgets.maxFailures" in _condition(status, "Failed")["message"]

