"""Properties of the pure core over random worlds (hypothesis): random pools, zones, nodes with any termination
signal, workers on them, cooldowns and clocks. Whatever the world, a decision never breaks these invariants."""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotrain_dev.corekit import NOW, node, observe, spec, store, worker
from spotrain_operator import wellknown as wk
from spotrain_operator.core import actions as act
from spotrain_operator.core.model import JobStatus, NodeView, PodView, Taint
from spotrain_operator.core.reconcile import Decision, Observed, decide
from spotrain_protocol import TrainerStatus

ZONES = ("a", "b", "c")
NOTICE_TAINTS = [
    Taint(wk.KARPENTER_DISRUPTED, "", "NoSchedule"),
    Taint(wk.NTH_SPOT_ITN, "event-1", "NoSchedule"),
    Taint(wk.GKE_IMPENDING_TERMINATION, "", "NoSchedule"),
    Taint(wk.AKS_REMEDIATOR_UNSCHEDULABLE, "", "NoSchedule"),
    Taint(wk.CA_TO_BE_DELETED, "1767254400", "NoSchedule"),
    Taint(wk.AGENT_INTERRUPTION_TAINT, "aws-spot-itn", "NoSchedule"),
]


@st.composite
def worlds(draw: st.DrawFn) -> Observed:
    max_nodes = draw(st.integers(1, 6))
    min_nodes = draw(st.integers(1, max_nodes))
    cooldown_zone = draw(st.sampled_from([None, *ZONES]))
    job = spec(elastic__maxNodes=max_nodes, elastic__minNodes=min_nodes, elastic__targetNodes=max_nodes,
               elastic__scaleUpWindow="0s")
    nodes: list[NodeView] = [node("od-a", "on-demand", "a")]
    for i in range(draw(st.integers(0, 8))):
        zone = draw(st.sampled_from(ZONES))
        taints = tuple(draw(st.lists(st.sampled_from(NOTICE_TAINTS), max_size=1)))
        nodes.append(node(f"s-{i}", draw(st.sampled_from(["spot-cpu", "gke-spot"])), zone, taints=taints,
                          ready=draw(st.booleans()) or not taints))
    pods: list[PodView] = [store()]
    for i, n in enumerate(nodes[1:]):
        if draw(st.booleans()):
            pool = n.labels.get("karpenter.sh/nodepool") or "gke-spot"
            pods.append(worker(f"w{i}", pool, n.zone, n.name, serial=i + 1, ip=f"127.16.{i}.1"))
    cooldowns = {f"{p}/{cooldown_zone}": NOW + datetime.timedelta(minutes=5)
                 for p in ("spot-cpu", "gke-spot")} if cooldown_zone else {}
    status = JobStatus(round=1, serial=100, cooldowns=cooldowns, start_time=NOW - datetime.timedelta(hours=1))
    later = NOW + datetime.timedelta(seconds=draw(st.integers(0, 600)))
    return observe(job, pods, nodes, status, later)


def live_after(o: Observed, d: Decision) -> list[Any]:
    removed = {a.name for a in d.actions if isinstance(a, act.DeletePod | act.EvictPod)}
    kept = [p for p in o.pods
            if p.role == "worker" and p.active and p.name not in removed and p.round == o.status.round]
    return kept + [a.manifest for a in d.actions if isinstance(a, act.CreatePod)
                   and a.manifest["metadata"]["labels"][wk.ROLE_LABEL] == "worker"]


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(worlds())
def test_every_world_gets_a_decision_without_errors(o: Observed) -> None:
    d = decide(o)
    assert not [c for c in d.status["conditions"] if c["type"] == "ReconcileError" and c["status"] == "True"]
    assert JobStatus.from_body(d.status).to_body() == d.status


@SETTINGS
@given(worlds())
def test_never_more_workers_than_max_nodes_nor_a_pool_cap(o: Observed) -> None:
    d = decide(o)
    assert len(live_after(o, d)) <= o.spec.max_nodes
    per_pool = Counter((p.pool if isinstance(p, PodView) else p["metadata"]["labels"][wk.POOL_LABEL])
                       for p in live_after(o, d))
    for pool in o.spec.pools:
        if pool.max_nodes is not None:
            assert per_pool[pool.name] <= pool.max_nodes


@SETTINGS
@given(worlds())
def test_never_a_new_worker_in_a_cooled_down_pool_and_zone(o: Observed) -> None:
    d = decide(o)
    cooled = {k for k, until in o.status.cooldowns.items() if until > o.now}
    for action in d.actions:
        if isinstance(action, act.CreatePod) and action.manifest["metadata"]["labels"][wk.ROLE_LABEL] == "worker":
            labels, selector = action.manifest["metadata"]["labels"], action.manifest["spec"]["nodeSelector"]
            assert f"{labels[wk.POOL_LABEL]}/{selector[wk.ZONE]}" not in cooled


@SETTINGS
@given(worlds())
def test_every_notice_on_a_worker_node_gets_a_checkpoint_request_and_an_eviction_when_due(o: Observed) -> None:
    first = decide(o)
    doomed = {w.node for w in o.pods if w.role == "worker" and w.active and w.node
              and (n := o.nodes.get(w.node)) is not None and n.ready and n.taints}
    requested = {ip for a in first.actions if isinstance(a, act.RequestCheckpoint) for _, ip in a.pod_ips}
    for name in doomed:
        assert name in first.status["drains"]
        assert requested, "a drain of a live worker's node asks the workers for a checkpoint"
    if not doomed:
        return
    # Past every deadline, with nobody answering: each doomed worker is evicted, gracefully.
    late = o.now + datetime.timedelta(minutes=10)
    second = decide(Observed(o.job, o.generation, o.spec, JobStatus.from_body(first.status), o.pods, o.nodes, late,
                             {w.name: TrainerStatus(step=1) for w in o.pods if w.role == "worker"}))
    evicted = {a.name: a.grace_seconds for a in second.actions if isinstance(a, act.EvictPod)}
    for w in o.pods:
        if w.role == "worker" and w.node in doomed:
            assert evicted.get(w.name, -1) >= o.spec.termination.safety_margin_seconds


@SETTINGS
@given(worlds())
def test_deciding_twice_on_the_same_input_gives_the_same_decision(o: Observed) -> None:
    assert decide(o) == decide(o)


@SETTINGS
@given(worlds())
def test_once_its_actions_are_seen_a_decision_asks_for_no_more_workers(o: Observed) -> None:
    """Level-triggered: after the pods a decision created appear (pending), deciding again creates none beyond
    what is still missing, so a repeated pass never doubles the job."""
    first = decide(o)
    removed = {a.name for a in first.actions if isinstance(a, act.DeletePod | act.EvictPod)}
    status = JobStatus.from_body(first.status)
    pods = [p for p in o.pods if p.name not in removed]
    for a in first.actions:
        if isinstance(a, act.CreatePod):
            labels = a.manifest["metadata"]["labels"]
            pods.append(PodView(name=a.manifest["metadata"]["name"], role=labels[wk.ROLE_LABEL],
                                round=int(labels[wk.ROUND_LABEL]), pool=labels[wk.POOL_LABEL],
                                zone=a.manifest["metadata"]["annotations"].get(wk.ZONE, ""), node=None,
                                phase="Pending", ready=False, deleting=False, created=o.now,
                                serial=int(labels.get(wk.SERIAL_LABEL, 0))))
    again = decide(Observed(o.job, o.generation, o.spec, status, pods, o.nodes, o.now, {}))
    total = len(live_after(Observed(o.job, o.generation, o.spec, status, pods, o.nodes, o.now), again))
    assert total <= o.spec.max_nodes
