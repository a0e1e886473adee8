"""The pure core: spec parsing, placement, termination signals and reconcile decisions, with no cluster."""

from __future__ import annotations

import copy
import datetime
import json
from dataclasses import replace

import pytest

from spotrain_dev.corekit import (
    ALL_SOURCES,
    NOW,
    QUICKSTART,
    base_nodes,
    created,
    node,
    observe,
    spec,
    store,
    worker,
)
from spotrain_operator import wellknown as wk
from spotrain_operator.api import SpecError, parse_duration, parse_spec
from spotrain_operator.core import actions as act
from spotrain_operator.core import placement
from spotrain_operator.core.model import JobStatus, Taint
from spotrain_operator.core.reconcile import decide
from spotrain_operator.core.termination import node_notice, pod_notice
from spotrain_protocol import TrainerStatus

# -- api --------------------------------------------------------------------------------------------------

def test_durations() -> None:
    assert parse_duration("1m30s", "f") == 90
    assert parse_duration("1.5h", "f") == 5400
    assert parse_duration("250ms", "f") == 0.25
    with pytest.raises(SpecError, match=r"spec\.x: 'soon' is not a duration; write it like 30s"):
        parse_duration("soon", "spec.x")


def test_pricing_config_map_fills_prices_and_bad_prices_name_the_field() -> None:
    raw = copy.deepcopy(QUICKSTART["spec"])
    del raw["placement"]["pools"][0]["hourlyPrice"]
    parsed = parse_spec(raw, {"spot-cpu.hourlyPrice": "0.2"})
    assert parsed.pool("spot-cpu").hourly_price == 0.2
    with pytest.raises(SpecError, match=r"spec.placement.pools\[0\].hourlyPrice"):
        parse_spec(raw, {"spot-cpu.hourlyPrice": "cheap"})


def test_rendezvous_defaults_to_the_fallback_pool() -> None:
    assert spec().rendezvous_pool_name == "on-demand"


# -- placement --------------------------------------------------------------------------------------------

def test_spread_across_zones_and_weights() -> None:
    s = spec()
    nodes = [node(f"s-{z}-{i}", "spot-cpu", z) for z in ("a", "b", "c") for i in range(2)]
    nodes += [node(f"g-{z}", "gke-spot", z) for z in ("a", "b", "c")]
    available = placement.offerings(s, nodes, [], {}, NOW, False)
    choices = placement.choose(s, available, [], 4)
    assert sorted(c.zone for c in choices) == ["a", "a", "b", "c"]
    # spot-cpu has weight 2, gke-spot weight 1.
    assert [c.pool for c in choices].count("spot-cpu") == 3


def test_pack_fills_one_zone_first() -> None:
    s = spec(placement__zones="Pack")
    nodes = [node(f"s-b-{i}", "spot-cpu", "b") for i in range(3)] + [node("s-a", "spot-cpu", "a")]
    choices = placement.choose(s, placement.offerings(s, nodes, [], {}, NOW, False), [], 4)
    assert [c.zone for c in choices] == ["b", "b", "b", "a"]


def test_cooldown_price_cap_taints_and_occupied_nodes_exclude_offerings() -> None:
    s = spec(placement__maxSpotPriceRatio=0.3)  # gke-spot costs 0.11/0.389 = 28 %, spot-cpu 31 %
    nodes = [node("s-a", "spot-cpu", "a"), node("g-a", "gke-spot", "a"), node("g-b", "gke-spot", "b"),
             node("g-c", "gke-spot", "c", taints=(Taint(wk.KARPENTER_DISRUPTED, "", "NoSchedule"),))]
    busy = [worker("w1", "gke-spot", "a", "g-a")]
    cooldowns = {placement.cooldown_key("gke-spot", "b"): NOW + datetime.timedelta(minutes=1)}
    assert placement.offerings(s, nodes, busy, cooldowns, NOW, False) == []
    later = NOW + datetime.timedelta(minutes=2)
    assert placement.offerings(s, nodes, busy, cooldowns, later, False) == [placement.Offering("gke-spot", "b", 1)]


def test_fallback_pool_only_when_active_and_capped() -> None:
    s = spec()
    nodes = [node(f"od-{z}", "on-demand", z) for z in ("a", "b", "c")]
    assert placement.offerings(s, nodes, [], {}, NOW, False) == []
    available = placement.offerings(s, nodes, [], {}, NOW, True)
    assert len(placement.choose(s, available, [], 3)) == 2  # fallback.maxNodes


# -- termination signals -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("taint", "source"), [
    (Taint(wk.NTH_SPOT_ITN, "spot-itn-1", "NoSchedule"), "nodeTerminationHandler"),
    (Taint(wk.NTH_ASG_LIFECYCLE, "x", "NoSchedule"), "nodeTerminationHandler"),
    (Taint(wk.KARPENTER_DISRUPTED, "", "NoSchedule"), "karpenter"),
    (Taint(wk.KARPENTER_DISRUPTION_V1BETA1, "disrupting", "NoSchedule"), "karpenter"),
    (Taint(wk.GKE_IMPENDING_TERMINATION, "", "NoSchedule"), "gke"),
    (Taint(wk.AKS_REMEDIATOR_UNSCHEDULABLE, "", "NoSchedule"), "aks"),
    (Taint(wk.CA_TO_BE_DELETED, "1767254400", "NoSchedule"), "clusterAutoscaler"),
    (Taint(wk.AGENT_INTERRUPTION_TAINT, "aws-spot-itn", "NoSchedule"), "agent"),
])
def test_each_taint_is_a_notice(taint: Taint, source: str) -> None:
    notice = node_notice(node("n", "spot-cpu", "a", taints=(taint,)), NOW, ALL_SOURCES, False)
    assert notice is not None and notice.source == source and notice.deadline > NOW
    assert node_notice(node("n", "spot-cpu", "a", taints=(taint,)), NOW, ALL_SOURCES - {source}, False) is None


def test_hints_and_rebalance_are_not_notices_unless_asked() -> None:
    hint = node("n", "spot-cpu", "a", taints=(Taint(wk.CA_DELETION_CANDIDATE, "1", "PreferNoSchedule"),))
    assert node_notice(hint, NOW, ALL_SOURCES, True) is None
    rebalance = node("n", "spot-cpu", "a", taints=(Taint(wk.NTH_REBALANCE, "r", "NoSchedule"),))
    assert node_notice(rebalance, NOW, ALL_SOURCES, False) is None
    assert node_notice(rebalance, NOW, ALL_SOURCES, True) is not None


def test_deadlines_come_from_the_signal_when_it_has_one() -> None:
    agent = node("n", "spot-cpu", "a", taints=(Taint(wk.AGENT_INTERRUPTION_TAINT, "gcp-preempted", "NoSchedule"),),
                 annotations={wk.AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:00:25Z"})
    assert node_notice(agent, NOW, ALL_SOURCES, False).deadline == NOW + datetime.timedelta(seconds=25)  # type: ignore[union-attr]
    gke = node("n", "gke-spot", "a", taints=(Taint(wk.GKE_IMPENDING_TERMINATION, "", "NoSchedule"),))
    assert node_notice(gke, NOW, ALL_SOURCES, False).deadline == NOW + datetime.timedelta(seconds=30)  # type: ignore[union-attr]


def test_far_away_maintenance_waits_until_it_is_near() -> None:
    days = NOW + datetime.timedelta(days=2)
    scheduled = node("n", "spot-cpu", "a", taints=(Taint(wk.AGENT_INTERRUPTION_TAINT, "aws-scheduled", "NoSchedule"),),
                     annotations={wk.AGENT_DEADLINE_ANNOTATION: days.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert node_notice(scheduled, NOW, ALL_SOURCES, False) is None
    assert node_notice(scheduled, days - datetime.timedelta(minutes=5), ALL_SOURCES, False) is not None


def test_pod_disruption_target_is_a_notice() -> None:
    evicted = worker("w", "spot-cpu", "a", "n", disruption_reason="EvictionByEvictionAPI")
    assert pod_notice(evicted, NOW, ALL_SOURCES).source == "podDisruption"  # type: ignore[union-attr]
    assert pod_notice(evicted, NOW, ALL_SOURCES - {"podDisruption"}) is None


# -- reconcile ---------------------------------------------------------------------------------------------

def test_first_reconcile_creates_store_service_and_workers_at_once() -> None:
    d = decide(observe(spec(), [], base_nodes(), JobStatus()))
    kinds = [type(a).__name__ for a in d.actions]
    assert kinds.count("EnsureObject") == 2  # the Service and the store's PodDisruptionBudget
    assert len(created(d)) == 3  # only 3 spot nodes; target 4 waits for capacity
    assert d.status["rendezvous"]["round"] == 1 and d.status["podSerial"] == 3
    assert d.status["pendingSince"] is not None  # short of spot: the fallback clock runs


def test_reconcile_is_idempotent_once_converged() -> None:
    s = spec(elastic__maxNodes=3)
    pods = [store(), *(worker(f"w{i}", "spot-cpu", z, f"s-{z}", serial=i) for i, z in enumerate("abc"))]
    d = decide(observe(s, pods, base_nodes()))
    assert not [a for a in d.actions if not isinstance(a, act.Event)]
    assert d.status["phase"] == "Running" and d.status["workersSummary"] == "3/3"


def test_joins_above_min_wait_for_the_window() -> None:
    s = spec(elastic__maxNodes=4)
    pods = [store(), worker("w1", "spot-cpu", "a", "s-a"), worker("w2", "spot-cpu", "b", "s-b", serial=2)]
    first = decide(observe(s, pods, base_nodes()))
    assert not created(first) and first.status["scaleUpAfter"]
    later = NOW + datetime.timedelta(seconds=21)
    second = decide(observe(s, pods, base_nodes(), JobStatus.from_body(first.status), now=later))
    assert len(created(second)) == 1


def test_success_records_the_final_checkpoint_named_in_the_termination_message() -> None:
    final = {"step": 500, "uri": "s3://bucket/job/step-000000500", "time": "2026-11-27T12:00:00Z"}
    message = json.dumps({"spotrain": "completed", "step": 500, "checkpoint": final})
    pods = [store(), worker("w0", "spot-cpu", "a", "s-a", phase="Succeeded", exit_code=0, termination_message=message),
            worker("w1", "spot-cpu", "b", "s-b", phase="Succeeded", exit_code=0, serial=2)]
    status = JobStatus.from_body({"rendezvous": {"round": 1}, "podSerial": 10,
                                  "lastCheckpoint": {"step": 294, "uri": "s3://bucket/job/step-000000294"}})
    d = decide(observe(spec(elastic__maxNodes=2), pods, base_nodes(), status))
    assert d.status["phase"] == "Succeeded"
    assert d.status["lastCheckpoint"] == final


def test_lost_node_is_a_preemption_with_cooldown_not_a_failure() -> None:
    s = spec(elastic__maxNodes=3)
    pods = [store(), *(worker(f"w{i}", "spot-cpu", z, f"s-{z}", serial=i) for i, z in enumerate("abc"))]
    nodes = [n for n in base_nodes() if n.name != "s-a"]
    d = decide(observe(s, pods, nodes))
    assert d.status["preemptions"] == 1 and d.status["failures"] == 0
    assert "spot-cpu/a" in d.status["cooldowns"]
    assert act.DeletePod("w0", "node s-a deleted", 0) in d.actions
    again = decide(observe(s, pods, nodes, JobStatus.from_body(d.status)))
    assert again.status["preemptions"] == 1, "a lost worker is counted once"


def test_notice_requests_one_checkpoint_then_evicts_when_durable() -> None:
    s = spec(elastic__maxNodes=3)
    doomed = node("s-a", "spot-cpu", "a", taints=(Taint(wk.KARPENTER_DISRUPTED, "", "NoSchedule"),))
    nodes = [doomed, *base_nodes()[1:]]
    pods = [store(), *(worker(f"w{i}", "spot-cpu", z, f"s-{z}", serial=i, ip=f"127.16.{i}.1")
                       for i, z in enumerate("abc"))]
    first = decide(observe(s, pods, nodes))
    requests = [a for a in first.actions if isinstance(a, act.RequestCheckpoint)]
    assert len(requests) == 1 and len(requests[0].pod_ips) == 3
    assert first.status["drains"]["s-a"]["requestID"] == requests[0].request_id
    assert not [a for a in first.actions if isinstance(a, act.EvictPod)]

    status = JobStatus.from_body(first.status)
    holding = TrainerStatus(step=10, pending_request_id=requests[0].request_id)
    waiting = decide(observe(s, pods, nodes, status, NOW + datetime.timedelta(seconds=2),
                             {"w0": holding, "w1": holding}))
    assert not [a for a in waiting.actions if isinstance(a, act.EvictPod | act.RequestCheckpoint)]

    durable = TrainerStatus(step=11, checkpoint_step=11, checkpoint_request_id=requests[0].request_id)
    done = decide(observe(s, pods, nodes, status, NOW + datetime.timedelta(seconds=5), {"w0": durable}))
    evictions = [a for a in done.actions if isinstance(a, act.EvictPod)]
    assert [e.name for e in evictions] == ["w0"]
    assert 0 < evictions[0].grace_seconds <= 120
    assert done.status["preemptions"] == 1 and done.status["lastCheckpoint"]["step"] == 11
    # The node is marked drained (the Azure acknowledgement) once the worker is gone, not when it is evicted.
    assert act.MarkNodeDrained("s-a") not in done.actions
    terminating = [pods[0], replace(pods[1], deleting=True), *pods[2:]]
    after = JobStatus.from_body(done.status)
    still = decide(observe(s, terminating, nodes, after, NOW + datetime.timedelta(seconds=6)))
    assert act.MarkNodeDrained("s-a") not in still.actions and "s-a" in still.status["drains"]
    gone = decide(observe(s, [pods[0], *pods[2:]], nodes, after, NOW + datetime.timedelta(seconds=7)))
    assert act.MarkNodeDrained("s-a") in gone.actions and "s-a" not in gone.status.get("drains", {})


def test_unreachable_worker_is_evicted_at_once_and_a_burst_is_one_request() -> None:
    s = spec(elastic__maxNodes=3)
    taint = (Taint(wk.NTH_SPOT_ITN, "e", "NoSchedule"),)
    nodes = [node("s-a", "spot-cpu", "a", taints=taint), node("s-b", "spot-cpu", "b", taints=taint),
             node("s-c", "spot-cpu", "c"), node("od-a", "on-demand", "a")]
    pods = [store(), *(worker(f"w{i}", "spot-cpu", z, f"s-{z}", serial=i) for i, z in enumerate("abc"))]
    first = decide(observe(s, pods, nodes))
    assert len([a for a in first.actions if isinstance(a, act.RequestCheckpoint)]) == 1
    assert set(first.status["drains"]) == {"s-a", "s-b"}
    second = decide(observe(s, pods, nodes, JobStatus.from_body(first.status), NOW + datetime.timedelta(seconds=1),
                            {"w0": None, "w1": TrainerStatus(step=3), "w2": TrainerStatus(step=3)}))
    assert [a.name for a in second.actions if isinstance(a, act.EvictPod)] == ["w0"]


def test_a_notice_arriving_during_a_checkpoint_joins_it() -> None:
    s = spec(elastic__maxNodes=3)
    taint = (Taint(wk.NTH_SPOT_ITN, "e", "NoSchedule"),)
    pods = [store(), *(worker(f"w{i}", "spot-cpu", z, f"s-{z}", serial=i, ip=f"127.16.{i}.1")
                       for i, z in enumerate("abc"))]
    first_nodes = [node("s-a", "spot-cpu", "a", taints=taint), *base_nodes()[1:]]
    first = decide(observe(s, pods, first_nodes))
    (request,) = [a for a in first.actions if isinstance(a, act.RequestCheckpoint)]
    both = [first_nodes[0], node("s-b", "spot-cpu", "b", taints=taint), *base_nodes()[2:]]
    second = decide(observe(s, pods, both, JobStatus.from_body(first.status), NOW + datetime.timedelta(seconds=1)))
    assert not [a for a in second.actions if isinstance(a, act.RequestCheckpoint)]
    assert {d["requestID"] for d in second.status["drains"].values()} == {request.request_id}
    (joined,) = [a for a in second.actions if isinstance(a, act.Event) and a.reason == "InterruptionNotice"]
    assert "s-b" in joined.message and request.request_id in joined.message


def test_deadline_minus_margin_forces_the_eviction() -> None:
    s = spec(elastic__maxNodes=3)
    nodes = [node("s-a", "spot-cpu", "a", taints=(Taint(wk.GKE_IMPENDING_TERMINATION, "", "NoSchedule"),)),
             *base_nodes()[1:]]
    pods = [store(), *(worker(f"w{i}", "spot-cpu", z, f"s-{z}", serial=i) for i, z in enumerate("abc"))]
    first = decide(observe(s, pods, nodes))
    late = NOW + datetime.timedelta(seconds=21)  # 30 s GKE notice - 10 s margin
    d = decide(observe(s, pods, nodes, JobStatus.from_body(first.status), late, {"w0": TrainerStatus(step=5)}))
    (eviction,) = [a for a in d.actions if isinstance(a, act.EvictPod)]
    # The safety margin is given to the pod as its grace, so that the SIGTERM checkpoint can still run.
    assert eviction.grace_seconds == 10


def test_notice_on_a_node_without_workers_does_nothing() -> None:
    s = spec(elastic__maxNodes=2)
    nodes = [*base_nodes(), node("s-x", "spot-cpu", "a", taints=(Taint(wk.KARPENTER_DISRUPTED, "", "NoSchedule"),))]
    pods = [store(), worker("w0", "spot-cpu", "a", "s-a"), worker("w1", "spot-cpu", "b", "s-b", serial=2)]
    d = decide(observe(s, pods, nodes))
    assert not d.status["drains"]
    assert not [a for a in d.actions if isinstance(a, act.RequestCheckpoint | act.EvictPod)]


def test_a_worker_stranded_in_a_lost_zone_is_placed_again() -> None:
    s = spec(elastic__maxNodes=3)
    stranded = worker("w2", "spot-cpu", "gone-zone", None, phase="Pending", serial=3,
                      unschedulable_since=NOW - datetime.timedelta(seconds=5))
    pods = [store(), worker("w0", "spot-cpu", "a", "s-a"), worker("w1", "spot-cpu", "b", "s-b", serial=2), stranded]
    d = decide(observe(s, pods, base_nodes()))
    assert any(isinstance(a, act.DeletePod) and a.name == "w2" for a in d.actions)
    # Above min the replacement is a join like any other: it comes with the next batch, in a zone with nodes.
    status = JobStatus.from_body(d.status)
    later = decide(observe(s, pods[:3], base_nodes(), status, NOW + datetime.timedelta(minutes=1)))
    assert [m["spec"]["nodeSelector"][wk.ZONE] for m in created(later)] == ["c"]


def test_budgets_fail_the_job() -> None:
    s = spec(budgets={"maxFailures": 0, "maxPreemptions": 5})
    failed = worker("w0", "spot-cpu", "a", "s-a", phase="Failed", exit_code=1)
    d = decide(observe(s, [store(), failed], base_nodes()))
    assert d.status["phase"] == "Failed" and d.status["failures"] == 1


def test_lost_rendezvous_starts_a_new_round() -> None:
    s = spec(elastic__maxNodes=2)
    pods = [store("gone"), worker("w0", "spot-cpu", "a", "s-a"), worker("w1", "spot-cpu", "b", "s-b", serial=2)]
    d = decide(observe(s, pods, base_nodes()))
    assert d.status["rendezvous"]["round"] == 2
    assert {a.name for a in d.actions if isinstance(a, act.DeletePod)} >= {"w0", "w1"}
    assert all(m["metadata"]["name"].endswith("-g2") for m in created(d))
