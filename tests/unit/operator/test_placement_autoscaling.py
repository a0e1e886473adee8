"""Autoscaled pools in the pure core: placement from zero nodes, room judged by resources, capacity that does
not come (provisioning timeout, NodePool limits), fallback only after spec.fallback.after, and the return to
spot through one probe pod."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from spotrain_dev.karpenter import NODE_POOLS
from spotrain_operator import wellknown as wk
from spotrain_operator.api import parse_spec
from spotrain_operator.controllers.capacity import CapacityIndexes
from spotrain_operator.core import actions as act
from spotrain_operator.core import placement
from spotrain_operator.core.model import JobStatus, NodeView, PodView
from spotrain_operator.core.pods import JobRef
from spotrain_operator.core.provisioning import (
    PROBE_ROLE,
    NodePoolView,
    NodeRoom,
    bound_pod_requests,
    disruption_annotations,
    pod_requests,
    render_rendezvous_pdb,
)
from spotrain_operator.core.reconcile import Decision, Observed, decide

T0 = datetime.datetime(2026, 1, 1, 8, 0, 0, tzinfo=datetime.UTC)
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
QUICKSTART = yaml.safe_load((Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml").read_text())
JOB = JobRef("job", "ns", "0123456789abcdef")


def karpenter_spec(*, zones: Sequence[str] | None = None, timeout: str = "2m", after: str = "1m", **extra: Any) -> Any:
    """spot (a Karpenter NodePool, no node yet) and on-demand (one static node that hosts the rendezvous)."""
    raw = copy.deepcopy(QUICKSTART["spec"])
    spot: dict[str, Any] = {"name": "spot", "nodeSelector": {wk.KARPENTER_NODEPOOL: "spot"}, "capacityType": "spot",
                            "provisioningTimeout": timeout}
    if zones is not None:
        spot["zones"] = list(zones)
    raw["placement"]["pools"] = [spot, {"name": "on-demand", "nodeSelector": {wk.KARPENTER_NODEPOOL: "on-demand"},
                                        "capacityType": "on-demand"}]
    raw["elastic"] = {"minNodes": 1, "maxNodes": 3}
    raw["fallback"] = {"pool": "on-demand", "after": after, "maxNodes": 3}
    raw.update(extra)
    return parse_spec(raw)


def node_pool(zones: Sequence[str] | None = ZONES, capacity: str = "spot", limits: dict[str, str] | None = None,
              usage: dict[str, str] | None = None) -> NodePoolView:
    requirements = [{"key": wk.KARPENTER_CAPACITY_TYPE, "operator": "In", "values": [capacity]}]
    if zones is not None:
        requirements.append({"key": wk.ZONE, "operator": "In", "values": list(zones)})
    return NodePoolView.from_body({"metadata": {"name": "spot"},
                                   "spec": {"template": {"spec": {"requirements": requirements}},
                                            "limits": limits or {}},
                                   "status": {"resources": usage or {}}})


def on_demand_node(name: str = "od-a", zone: str = "us-east-1a") -> NodeView:
    return NodeView(name, {wk.KARPENTER_NODEPOOL: "on-demand", wk.ZONE: zone})


def spot_node(name: str, zone: str) -> NodeView:
    return NodeView(name, {wk.KARPENTER_NODEPOOL: "spot", wk.ZONE: zone})


def pod(name: str, pool: str, zone: str, node: str | None = None, *, role: str = "worker", phase: str | None = None,
        created: datetime.datetime = T0, serial: int = 1, unschedulable: bool = False, round_: int = 1) -> PodView:
    phase = phase or ("Running" if node else "Pending")
    return PodView(name=name, role=role, round=round_, pool=pool, zone=zone, node=node, phase=phase,
                   ready=phase == "Running", deleting=False, created=created, ip="127.16.0.1" if node else None,
                   unschedulable_since=created if unschedulable else None, serial=serial)


def store(name: str = "job-rdzv-g1", round_: int = 1) -> PodView:
    return PodView(name=name, role="rendezvous", round=round_, pool="on-demand", zone="us-east-1a", node="od-a",
                   phase="Running", ready=True, deleting=False, created=T0)


class World:
    """Replays decisions: created pods appear Pending (Unschedulable, as a pod waiting for an autoscaled node
    is), deleted ones vanish, and the status is read back as the next pass's, as the operator does."""

    def __init__(self, spec: Any, nodes: list[NodeView], pods: list[PodView], node_pools: dict[str, NodePoolView]):
        self.spec, self.nodes, self.pods, self.node_pools = spec, nodes, pods, node_pools
        self.status = JobStatus(round=1, serial=10)
        self.history: list[Decision] = []

    def step(self, now: datetime.datetime) -> Decision:
        d = decide(Observed(JOB, 1, self.spec, self.status, list(self.pods), {n.name: n for n in self.nodes}, now,
                            {}, node_pools=self.node_pools))
        gone = {a.name for a in d.actions if isinstance(a, act.DeletePod | act.EvictPod)}
        self.pods = [p for p in self.pods if p.name not in gone]
        for a in d.actions:
            if not isinstance(a, act.CreatePod):
                continue
            meta = a.manifest["metadata"]
            if meta["labels"][wk.ROLE_LABEL] == "rendezvous":
                self.pods.append(store(meta["name"], int(meta["labels"][wk.ROUND_LABEL])))
            else:
                self.pods.append(pod(meta["name"], meta["labels"][wk.POOL_LABEL], meta["annotations"][wk.ZONE],
                                     role=meta["labels"][wk.ROLE_LABEL], created=now, unschedulable=True,
                                     serial=int(meta["labels"][wk.SERIAL_LABEL]),
                                     round_=int(meta["labels"][wk.ROUND_LABEL])))
        self.status = JobStatus.from_body(d.status)
        self.history.append(d)
        return d

    def run(self, name: str, node: str) -> None:
        """The pod's node arrived and it runs there."""
        self.pods = [pod(p.name, p.pool, p.zone, node, role=p.role, created=p.created or T0, serial=p.serial,
                         round_=p.round) if p.name == name else p for p in self.pods]

    def workers(self, pool: str | None = None) -> list[PodView]:
        return [p for p in self.pods if p.role == "worker" and (pool is None or p.pool == pool)]

    def probes(self) -> list[PodView]:
        return [p for p in self.pods if p.role == PROBE_ROLE]


def seconds(n: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=n)


def created(d: Decision, role: str = "worker") -> list[dict[str, Any]]:
    return [a.manifest for a in d.actions if isinstance(a, act.CreatePod)
            and a.manifest["metadata"]["labels"][wk.ROLE_LABEL] == role]


def events(d: Decision, reason: str) -> list[str]:
    return [a.message for a in d.actions if isinstance(a, act.Event) and a.reason == reason]


# -- zones of pools without nodes ---------------------------------------------------------------------------

def test_a_nodepool_with_no_nodes_offers_its_zones() -> None:
    s = karpenter_spec()
    offers = placement.offerings(s, [on_demand_node()], [], {}, T0, False, node_pools={"spot": node_pool()})
    assert [(o.pool, o.zone, o.existing) for o in offers] == [("spot", z, 0) for z in ZONES]
    choices = placement.choose(s, offers, [], 3)
    assert sorted(c.zone for c in choices) == sorted(ZONES)


def test_spec_zones_win_over_the_nodepool_and_a_pool_without_either_offers_only_its_nodes() -> None:
    s = karpenter_spec(zones=["us-east-1b"])
    offers = placement.offerings(s, [], [], {}, T0, False, node_pools={"spot": node_pool()})
    assert [o.zone for o in offers] == ["us-east-1b"]
    assert placement.offerings(karpenter_spec(), [], [], {}, T0, False) == []  # static: no node, no offer
    # A NodePool without a zone requirement: the zones of the cluster's nodes.
    offers = placement.offerings(karpenter_spec(), [on_demand_node("od-c", "us-east-1c")], [], {}, T0, False,
                                 node_pools={"spot": node_pool(zones=None)})
    assert [o.zone for o in offers] == ["us-east-1c"]


def test_a_nodepool_that_cannot_launch_the_worker_offers_nothing() -> None:
    s = karpenter_spec()
    for pool in (node_pool(capacity="on-demand"), node_pool(limits={"cpu": "8"}, usage={"cpu": "8"}),
                 node_pool(limits={"cpu": "9"}, usage={"cpu": "8"}),  # 1 CPU left, the worker asks for 2
                 node_pool(limits={"nodes": "2"}, usage={"nodes": "2"})):
        assert placement.offerings(s, [], [], {}, T0, False, node_pools={"spot": pool}) == [], pool
    assert placement.offerings(s, [], [], {}, T0, False,
                               node_pools={"spot": node_pool(limits={"cpu": "16"}, usage={"cpu": "8"})})


def test_a_job_on_zero_nodes_creates_its_pods_spread_over_the_nodepool_zones() -> None:
    world = World(karpenter_spec(), [on_demand_node()], [], {"spot": node_pool()})
    d = world.step(T0)
    assert sorted(m["spec"]["nodeSelector"][wk.ZONE] for m in created(d)) == sorted(ZONES)
    assert all(m["spec"]["nodeSelector"][wk.KARPENTER_NODEPOOL] == "spot" for m in created(d))
    assert created(d, "rendezvous")
    # Waiting for Karpenter is not a shortage: nothing is replaced or falls back while the nodes come.
    d = world.step(seconds(30))
    assert not created(d) and not [a for a in d.actions if isinstance(a, act.DeletePod)]
    assert d.status.get("pendingSince") is None


# -- room on nodes -------------------------------------------------------------------------------------------

def test_pod_requests_follow_the_scheduler() -> None:
    spec = {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                           {"resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "1"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "4"}}}],
            "overhead": {"memory": "128Mi"}}
    assert pod_requests(spec) == {"cpu": Decimal(4), "memory": Decimal(1024 ** 3 + 128 * 1024 ** 2),
                                  "nvidia.com/gpu": Decimal(1)}


def test_a_node_full_of_other_pods_is_not_free() -> None:
    s = karpenter_spec()
    nodes = [spot_node("big", "us-east-1a"), spot_node("empty", "us-east-1b")]
    room = {"big": NodeRoom.of({"cpu": "8", "memory": "32Gi", "pods": "110"}, [{"cpu": Decimal(7)}]),
            "empty": NodeRoom.of({"cpu": "8", "memory": "32Gi", "pods": "1"}, [])}
    offers = placement.offerings(s, nodes, [], {}, T0, False, room=room)
    assert [(o.zone, o.free_nodes) for o in offers] == [("us-east-1b", 1)]
    room["empty"] = NodeRoom.of({"cpu": "8", "pods": "1"}, [{}])  # its one pod slot is taken
    assert placement.offerings(s, nodes, [], {}, T0, False, room=room) == []


@given(st.lists(st.tuples(st.integers(0, 8000), st.integers(1, 3)), min_size=1, max_size=12),
       st.integers(0, 4000))
def test_free_nodes_are_exactly_those_with_room_for_the_worker(loads: list[tuple[int, int]], request: int) -> None:
    raw = copy.deepcopy(QUICKSTART["spec"])
    raw["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": f"{request}m"}}
    s = parse_spec(raw)
    nodes = [NodeView(f"n{i}", {wk.KARPENTER_NODEPOOL: "spot-cpu", wk.ZONE: ZONES[i % 3]}) for i in range(len(loads))]
    room = {f"n{i}": NodeRoom.of({"cpu": "8", "pods": str(pods)}, [{"cpu": Decimal(used) / 1000}] * (pods - 1))
            for i, (used, pods) in enumerate(loads)}
    offers = placement.offerings(s, nodes, [], {}, T0, False, room=room)
    # As the scheduler's NodeResourcesFit: a resource the pod does not request is not checked.
    fitting = [i for i, (used, pods) in enumerate(loads) if request == 0 or
               Decimal(8) - Decimal(used) / 1000 * (pods - 1) >= Decimal(request) / 1000]
    assert sum(o.free_nodes for o in offers if o.pool == "spot-cpu") == len(fitting)


# -- capacity that does not come -----------------------------------------------------------------------------

def test_a_worker_past_its_provisioning_timeout_cools_its_zone_and_moves() -> None:
    world = World(karpenter_spec(timeout="2m"), [on_demand_node()], [store()], {"spot": node_pool()})
    world.status = JobStatus(round=1, serial=10)
    world.step(T0)
    first = {p.zone: p.name for p in world.workers()}
    for zone in ("us-east-1b", "us-east-1c"):
        world.run(first[zone], f"spot-{zone}")
        world.nodes.append(spot_node(f"spot-{zone}", zone))
    d = world.step(seconds(121))
    assert act.DeletePod(first["us-east-1a"], "no node for spot/us-east-1a within its provisioning timeout",
                         None) in d.actions
    assert "spot/us-east-1a" in d.status["cooldowns"] and events(d, "ProvisioningTimeout")
    d = world.step(seconds(121 + 31))  # the replacement joins after spec.elastic.scaleUpWindow, as any join
    assert [m["spec"]["nodeSelector"][wk.ZONE] for m in created(d)] in (["us-east-1b"], ["us-east-1c"])


def test_a_worker_whose_nodepool_reached_its_limits_is_replaced_at_once() -> None:
    world = World(karpenter_spec(zones=["us-east-1a", "us-east-1b"]), [on_demand_node()], [store()],
                  {"spot": node_pool()})
    world.step(T0)
    world.node_pools["spot"] = node_pool(limits={"cpu": "8"}, usage={"cpu": "8"})
    d = world.step(seconds(5))
    assert len([a for a in d.actions if isinstance(a, act.DeletePod)]) == 3
    assert not events(d, "ProvisioningTimeout")  # nothing to cool down: the limit says why


def test_fallback_waits_for_after_then_does_not_flap() -> None:
    """All spot exhausted: on-demand only once spot has been short for fallback.after; then, while spot stays
    short or only hoped for, the on-demand workers are never removed and at most one probe asks for spot."""
    world = World(karpenter_spec(timeout="1m", after="1m"), [on_demand_node()], [store()], {"spot": node_pool()})
    world.spec = karpenter_spec(timeout="1m", after="1m", elastic={"minNodes": 1, "maxNodes": 1})
    world.step(T0)
    assert [p.pool for p in world.workers()] == ["spot"]
    t = 0.0
    on_demand_created_at = None
    removed_on_demand = []
    for _ in range(80):
        t += 5
        d = world.step(seconds(t))
        if created(d) and created(d)[0]["metadata"]["labels"][wk.POOL_LABEL] == "on-demand":
            on_demand_created_at = on_demand_created_at or t
            world.run(created(d)[0]["metadata"]["name"], "od-a")
        removed_on_demand += [a.name for a in d.actions if isinstance(a, act.DeletePod) and "on-demand" in a.name]
        assert len(world.probes()) <= 1
        assert len([w for w in world.workers()]) <= 1
    pending_since = 60  # the spot worker timed out at 60 s: from then spot was short
    assert on_demand_created_at is not None and on_demand_created_at >= pending_since + 60
    assert removed_on_demand == []
    assert [w.pool for w in world.workers()] == ["on-demand"]
    assert any(events(d, "SpotProbe") for d in world.history)


def test_a_probe_that_runs_brings_one_worker_back_to_spot() -> None:
    s = karpenter_spec()
    od = pod("job-worker-5-g1", "on-demand", "us-east-1a", "od-a", serial=5)
    world = World(s, [on_demand_node()], [store(), od], {"spot": node_pool()})
    world.status = JobStatus(round=1, serial=10)
    world.spec = karpenter_spec(elastic={"minNodes": 1, "maxNodes": 1})
    d = world.step(T0)
    (probe,) = created(d, PROBE_ROLE)
    assert probe["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "4294967296"}
    assert not [a for a in d.actions if isinstance(a, act.DeletePod)]
    assert not created(world.step(seconds(5)), PROBE_ROLE)  # one at a time
    zone = probe["metadata"]["annotations"][wk.ZONE]
    world.nodes.append(spot_node("spot-new", zone))
    world.run(probe["metadata"]["name"], "spot-new")
    d = world.step(seconds(10))
    assert {a.name for a in d.actions if isinstance(a, act.DeletePod)} == {probe["metadata"]["name"], od.name}
    (moved,) = created(d)
    assert moved["metadata"]["labels"][wk.POOL_LABEL] == "spot" and moved["spec"]["nodeSelector"][wk.ZONE] == zone
    assert events(d, "ReturnToSpot")


# -- protection ----------------------------------------------------------------------------------------------

def test_disruption_vetoes_and_the_rendezvous_budget() -> None:
    assert disruption_annotations() == {"karpenter.sh/do-not-disrupt": "true",
                                        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
    pdb = render_rendezvous_pdb(JOB)
    assert pdb["spec"] == {"maxUnavailable": 0,
                           "selector": {"matchLabels": {wk.JOB_LABEL: "job", wk.ROLE_LABEL: "rendezvous"}}}
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == JOB.uid


def test_the_devcluster_nodepools_parse_as_karpenter_reads_them() -> None:
    bodies = {b["metadata"]["name"]: b for b in yaml.safe_load_all(NODE_POOLS.read_text())}
    gpu_spot = NodePoolView.from_body(bodies["gpu-spot"])
    assert gpu_spot.zones == ZONES and gpu_spot.capacity_types == ("spot",)
    assert gpu_spot.limits == {"nvidia.com/gpu": Decimal(64)}
    assert gpu_spot.can_launch("spot", {wk.INSTANCE_TYPE: "p4d.24xlarge"}, {"nvidia.com/gpu": Decimal(8)})
    assert not gpu_spot.can_launch("spot", {wk.INSTANCE_TYPE: "m6i.2xlarge"}, {})
    assert not NodePoolView.from_body(bodies["system"]).can_launch("spot", {}, {})


def test_capacity_indexes_become_node_room() -> None:
    indexes = CapacityIndexes(
        node_pools={"spot": [node_pool()]},
        allocatable={"n1": [{"cpu": "8", "pods": "110"}]},
        requests={"n1": [{"cpu": Decimal(3)}, {"cpu": Decimal(4)}]},
    )
    observed = indexes.observe()
    assert observed["node_pools"]["spot"].zones == ZONES
    room = observed["node_room"]["n1"]
    assert room.requested == {"cpu": Decimal(7)} and room.pods == 2
    assert room.fits({"cpu": Decimal(1)}) and not room.fits({"cpu": Decimal(2)})
    assert bound_pod_requests({"spec": {"nodeName": "n1", "containers": []}, "status": {"phase": "Succeeded"}}) is None
