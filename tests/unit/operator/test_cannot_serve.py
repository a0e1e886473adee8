"""Capacity the autoscaler says it cannot provide: Karpenter's FailedScheduling Events on a pending pod (parsed in
core/provisioning.py), read by the shell (controllers/capacity.py) and acted on by the core at once: the (pool, zone)
is cooled down and the worker or probe placed again, long before the pool's provisioning timeout.

The messages below are Karpenter v1.13's own, built as its code builds them (pkg/controllers/provisioning/
scheduling/events.go PodFailedToScheduleEvent, scheduler.go:625/630, nodeclaim.go InstanceTypeFilterError)."""

from __future__ import annotations

import copy
import datetime
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.rest import ApiException

from spotrain_operator import wellknown as wk
from spotrain_operator.api import parse_spec
from spotrain_operator.controllers.capacity import unservable
from spotrain_operator.core import actions as act
from spotrain_operator.core.model import JobStatus, NodeView, PodView
from spotrain_operator.core.pods import JobRef
from spotrain_operator.core.provisioning import (
    KARPENTER_EVENTS_SELECTOR,
    PROBE_ROLE,
    NodePoolView,
    karpenter_cannot_serve,
    pods_karpenter_cannot_serve,
)
from spotrain_operator.core.reconcile import Decision, Observed, decide

T0 = datetime.datetime(2026, 1, 1, 8, 0, 0, tzinfo=datetime.UTC)
READY_AT = "2026-01-01T07:00:00Z"
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
QUICKSTART = yaml.safe_load((Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml").read_text())
JOB = JobRef("job", "ns", "0123456789abcdef")

LIMIT = ("Failed to schedule pod, all available instance types exceed limits for nodepool (NodePool=spot); "
         "incompatible requirements, key karpenter.sh/nodepool, karpenter.sh/nodepool In [spot] not in "
         "karpenter.sh/nodepool In [on-demand]")
NODE_LIMIT = "Failed to schedule pod, node limits have been exhausted for nodepool (NodePool=spot)"
NO_OFFERING = ("Failed to schedule pod, incompatible requirements, key karpenter.sh/nodepool, karpenter.sh/nodepool "
               "In [spot] not in karpenter.sh/nodepool In [system]; no instance type has the required offering, "
               "requirements=karpenter.sh/capacity-type In [spot], karpenter.sh/nodepool In [spot], "
               "node.kubernetes.io/instance-type In [m6i.2xlarge], topology.kubernetes.io/zone In [us-east-1a], "
               "resources={\"cpu\":\"2\",\"memory\":\"4Gi\",\"pods\":\"1\"}")
ZONE_NOT_SERVED = ("Failed to schedule pod, incompatible requirements, key topology.kubernetes.io/zone, "
                   "topology.kubernetes.io/zone In [us-east-1c] not in topology.kubernetes.io/zone In [us-east-1a]")


def node_pool(name: str = "spot", ready_at: str | None = READY_AT) -> NodePoolView:
    status: dict[str, Any] = {}
    if ready_at is not None:
        status["conditions"] = [{"type": "Ready", "status": "True", "lastTransitionTime": ready_at}]
    return NodePoolView.from_body({"metadata": {"name": name}, "spec": {}, "status": status})


def event(message: str, pod: str = "job-w-11-g1", *, reason: str = "FailedScheduling", component: str = "karpenter",
          at: str = "2026-01-01T07:59:50Z") -> dict[str, Any]:
    return {"reason": reason, "type": "Warning", "message": message, "source": {"component": component},
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": "ns"}, "firstTimestamp": at,
            "lastTimestamp": at}


# -- reading Karpenter's words ---------------------------------------------------------------------------------

def test_a_nodepool_limit_is_read_with_the_words_about_the_pods_own_nodepool() -> None:
    assert karpenter_cannot_serve(event(LIMIT), node_pool()) == \
        "all available instance types exceed limits for nodepool (NodePool=spot)"
    assert karpenter_cannot_serve(event(NODE_LIMIT), node_pool()) == \
        "node limits have been exhausted for nodepool (NodePool=spot)"
    assert karpenter_cannot_serve(event(NO_OFFERING), node_pool()).startswith(  # type: ignore[union-attr]
        "no instance type has the required offering")
    # Nothing names the NodePool: Karpenter's first word that is not about another NodePool.
    assert karpenter_cannot_serve(event(ZONE_NOT_SERVED), node_pool()) == ZONE_NOT_SERVED.removeprefix(
        "Failed to schedule pod, ")


def test_other_reporters_reasons_and_unready_nodepools_are_not_an_answer() -> None:
    assert karpenter_cannot_serve(event(LIMIT, component="default-scheduler"), node_pool()) is None
    assert karpenter_cannot_serve(event("Pod should schedule on: nodeclaim/spot-x", reason="Nominated"),
                                  node_pool()) is None
    # A NodePool that is not Ready is left out of Karpenter's simulation: its pods look incompatible until it is.
    assert karpenter_cannot_serve(event(LIMIT), node_pool(ready_at=None)) is None
    assert karpenter_cannot_serve(event(LIMIT, at="2026-01-01T06:59:59Z"), node_pool()) is None
    assert karpenter_cannot_serve(event(LIMIT, at=READY_AT), node_pool()) is None  # the same second: maybe before
    # The newer core/v1 field also names the reporter.
    newer = {**event(NODE_LIMIT), "source": {}, "reportingComponent": "karpenter"}
    assert karpenter_cannot_serve(newer, node_pool())


def test_only_the_waiting_pods_are_named() -> None:
    events = [event(LIMIT, "job-w-11-g1"), event(LIMIT, "someone-else"),
              {**event(NODE_LIMIT, "job-w-12-g1"), "involvedObject": {"kind": "Node", "name": "job-w-12-g1"}}]
    assert pods_karpenter_cannot_serve(events, {"job-w-11-g1": node_pool(), "job-w-12-g1": node_pool()}) == {
        "job-w-11-g1": "all available instance types exceed limits for nodepool (NodePool=spot)"}


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                                 max_size=4), max_leaves=12)


@given(extra=st.dictionaries(st.sampled_from(["reason", "message", "source", "reportingComponent",
                                              "involvedObject", "lastTimestamp", "eventTime", "firstTimestamp"]),
                             _json, max_size=8),
       message=st.text(max_size=600))
def test_any_event_is_read_without_error_and_answers_briefly(extra: dict[str, Any], message: str) -> None:
    for body in (extra, {**event(message), **extra}, event(message)):
        why = karpenter_cannot_serve(body, node_pool())
        assert why is None or 0 < len(why) <= 300
        assert pods_karpenter_cannot_serve([body], {"job-w-11-g1": node_pool()}).keys() <= {"job-w-11-g1"}
    assert karpenter_cannot_serve(event(message), node_pool())  # Karpenter's FailedScheduling always answers


# -- the core: cool down and re-place at once --------------------------------------------------------------------

def spec(zones: tuple[str, ...] = ("us-east-1a", "us-east-1b"), **extra: Any) -> Any:
    raw = copy.deepcopy(QUICKSTART["spec"])
    raw["placement"]["pools"] = [
        {"name": "spot", "nodeSelector": {wk.KARPENTER_NODEPOOL: "spot"}, "capacityType": "spot",
         "zones": list(zones), "provisioningTimeout": "10m"},
        {"name": "on-demand", "nodeSelector": {wk.KARPENTER_NODEPOOL: "on-demand"}, "capacityType": "on-demand"}]
    raw["elastic"] = {"minNodes": 1, "maxNodes": 1}
    raw["fallback"] = {"pool": "on-demand", "after": "5m", "maxNodes": 1}
    raw.update(extra)
    return parse_spec(raw)


def pending(name: str, zone: str, role: str = "worker", serial: int = 11) -> PodView:
    return PodView(name=name, role=role, round=1, pool="spot", zone=zone, node=None, phase="Pending", ready=False,
                   deleting=False, created=T0 - datetime.timedelta(seconds=20), serial=serial,
                   unschedulable_since=T0 - datetime.timedelta(seconds=15))


STORE = PodView(name="job-rdzv-g1", role="rendezvous", round=1, pool="on-demand", zone="us-east-1a", node="od-a",
                phase="Running", ready=True, deleting=False, created=T0)
ON_DEMAND_NODE = NodeView("od-a", {wk.KARPENTER_NODEPOOL: "on-demand", wk.ZONE: "us-east-1a"})


def decide_with(pods: list[PodView], unservable_pods: dict[str, str], s: Any = None) -> Decision:
    return decide(Observed(JOB, 1, s or spec(), JobStatus(round=1, serial=11), [STORE, *pods],
                           {"od-a": ON_DEMAND_NODE}, T0, {}, node_pools={"spot": node_pool()},
                           unservable=unservable_pods))


def test_a_worker_karpenter_cannot_serve_is_replaced_in_another_zone_long_before_its_timeout() -> None:
    worker = pending("job-w-11-g1", "us-east-1a")
    why = "all available instance types exceed limits for nodepool (NodePool=spot)"
    d = decide_with([worker], {worker.name: why})
    assert act.DeletePod(worker.name, "the autoscaler cannot serve spot/us-east-1a", None) in d.actions
    assert "spot/us-east-1a" in d.status["cooldowns"]
    (message,) = [a.message for a in d.actions if isinstance(a, act.Event) and a.reason == "CapacityUnavailable"]
    assert why in message and "spot/us-east-1a" in message
    (replacement,) = [a.manifest for a in d.actions if isinstance(a, act.CreatePod)
                      and a.manifest["metadata"]["labels"][wk.ROLE_LABEL] == "worker"]
    assert replacement["spec"]["nodeSelector"][wk.ZONE] == "us-east-1b"
    assert not [a for a in d.actions if isinstance(a, act.Event) and a.reason in ("ProvisioningTimeout",
                                                                                   "FallbackToOnDemand")]
    # Without the report the same worker keeps waiting for its node: the timeout is 10 minutes.
    quiet = decide_with([worker], {})
    assert not [a for a in quiet.actions if isinstance(a, act.DeletePod | act.CreatePod)]


def test_every_spot_zone_refused_falls_back_only_after_fallback_after() -> None:
    a, b = pending("job-w-11-g1", "us-east-1a"), pending("job-w-12-g1", "us-east-1b", serial=12)
    d = decide_with([a, b], {a.name: "limits", b.name: "limits"}, spec(elastic={"minNodes": 1, "maxNodes": 2}))
    assert {"spot/us-east-1a", "spot/us-east-1b"} <= d.status["cooldowns"].keys()
    assert d.status.get("pendingSince")  # spot is short from now on
    assert not [a for a in d.actions if isinstance(a, act.CreatePod)
                and a.manifest["metadata"]["labels"][wk.ROLE_LABEL] == "worker"]  # on-demand waits for `after`


def test_a_probe_karpenter_cannot_serve_is_given_up_and_its_zone_cooled() -> None:
    probe = pending("job-probe-12-g1", "us-east-1a", role=PROBE_ROLE, serial=12)
    d = decide_with([probe], {probe.name: "node limits have been exhausted for nodepool (NodePool=spot)"})
    assert any(isinstance(a, act.DeletePod) and a.name == probe.name for a in d.actions)
    assert "spot/us-east-1a" in d.status["cooldowns"]


@given(st.lists(st.tuples(st.sampled_from(ZONES), st.booleans()), min_size=1, max_size=3, unique_by=lambda t: t[0]),
       st.booleans())
def test_no_worker_is_placed_where_karpenter_just_said_no(waiting: list[tuple[str, bool]], probe: bool) -> None:
    s = spec(ZONES, elastic={"minNodes": 1, "maxNodes": 3})
    pods = [pending(f"job-{'probe' if probe and i == 0 else 'w'}-{11 + i}-g1", zone,
                    role=PROBE_ROLE if probe and i == 0 else "worker", serial=11 + i)
            for i, (zone, _) in enumerate(waiting)]
    refused = {p.name: "limits" for p, (_, no) in zip(pods, waiting, strict=True) if no}
    d = decide_with(pods, refused, s)
    refused_zones = {p.zone for p in pods if p.name in refused}
    for name in refused:
        assert any(isinstance(a, act.DeletePod) and a.name == name for a in d.actions)
    assert {f"spot/{z}" for z in refused_zones} <= d.status.get("cooldowns", {}).keys()
    for a in d.actions:
        if isinstance(a, act.CreatePod) and a.manifest["metadata"]["labels"].get(wk.POOL_LABEL) == "spot":
            assert a.manifest["spec"]["nodeSelector"][wk.ZONE] not in refused_zones, a.manifest["metadata"]["name"]
    assert not [a for a in d.actions if isinstance(a, act.Event) and a.reason == "ProvisioningTimeout"]


# -- the shell: asks only when a pod waits for a Karpenter node ------------------------------------------------

class FakeCluster:
    def __init__(self, events: list[dict[str, Any]]):
        self.events = events
        self.asked: list[tuple[str, str]] = []

    def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
        self.asked.append((namespace, field_selector))
        return self.events


def test_the_shell_lists_karpenter_events_only_for_pods_waiting_on_a_nodepool() -> None:
    cluster = FakeCluster([event(LIMIT, "job-w-11-g1")])
    waiting = pending("job-w-11-g1", "us-east-1a")
    assert unservable(cluster, "ns", spec(), [waiting], {"spot": node_pool()}) == {  # type: ignore[arg-type]
        "job-w-11-g1": "all available instance types exceed limits for nodepool (NodePool=spot)"}
    assert cluster.asked == [("ns", KARPENTER_EVENTS_SELECTOR)]
    cluster.asked.clear()
    bound = PodView(**{**waiting.__dict__, "node": "n1", "phase": "Running"})
    not_yet_unschedulable = PodView(**{**waiting.__dict__, "unschedulable_since": None})
    for pods, pools in (([bound], {"spot": node_pool()}), ([not_yet_unschedulable], {"spot": node_pool()}),
                        ([waiting], {})):  # no NodePool: Karpenter does not serve this pool
        assert unservable(cluster, "ns", spec(), pods, pools) == {}  # type: ignore[arg-type]
    assert cluster.asked == []


def test_a_refused_events_list_leaves_the_pods_to_their_timeout() -> None:
    class Forbidden(FakeCluster):
        def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
            raise ApiException(status=403, reason="Forbidden")

    waiting = pending("job-w-11-g1", "us-east-1a")
    assert unservable(Forbidden([]), "ns", spec(), [waiting], {"spot": node_pool()}) == {}  # type: ignore[arg-type]
