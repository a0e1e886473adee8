"""Where new workers go: pools, zones, weights, caps, cooldowns, price caps and the on-demand fallback.

Pure: observed nodes and workers in, a list of (pool, zone) choices out. The kube-scheduler still binds each
pod; placement only decides which pool and zone each pod is pinned to. A pool offers the nodes it has that can
still hold a worker and, when it is autoscaled, the nodes its autoscaler can add: in the zones the spec lists
for it, else those of its Karpenter NodePool. An autoscaled pool starts from zero nodes: the pending worker is
what makes the autoscaler provision one.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from spotrain_operator.api import JobSpec, Pool
from spotrain_operator.core.model import NodeView, PodView, Taint
from spotrain_operator.core.provisioning import NodePoolView, NodeRoom, Resources, node_pool_of, pod_requests


@dataclass(frozen=True)
class Offering:
    pool: str
    zone: str
    free_nodes: int  # workers this (pool, zone) can take now: free nodes, plus those its autoscaler can add
    existing: int = field(default=0, compare=False)  # of which free nodes that exist already


@dataclass(frozen=True)
class Choice:
    pool: str
    zone: str


def cooldown_key(pool: str, zone: str) -> str:
    return f"{pool}/{zone}"


def _tolerated(taint: Taint, tolerations: Iterable[Mapping[str, object]]) -> bool:
    if taint.effect == "PreferNoSchedule":
        return True
    for t in tolerations:
        operator = t.get("operator") or "Equal"
        key = t.get("key") or ""
        if key and key != taint.key:
            continue
        if not key and operator != "Exists":
            continue
        if operator == "Equal" and (t.get("value") or "") != taint.value:
            continue
        if t.get("effect") and t.get("effect") != taint.effect:
            continue
        return True
    return False


def pool_tolerations(spec: JobSpec, pool: Pool) -> list[dict[str, object]]:
    return [*spec.template.get("spec", {}).get("tolerations", []), *(t.to_dict() for t in pool.tolerations)]


def pool_node_selector(spec: JobSpec, pool: Pool) -> dict[str, str]:
    """The labels a pod of this pool selects, zone aside: the template's and the pool's."""
    return {**(spec.template.get("spec", {}).get("nodeSelector") or {}), **pool.node_selector}


def node_accepts(node: NodeView, tolerations: Sequence[Mapping[str, object]]) -> bool:
    """A node a new pod could land on: ready, schedulable, and every hard taint tolerated (a termination
    notice is a NoSchedule taint, so a doomed node never takes a new worker)."""
    if not node.ready or node.unschedulable or node.deleting:
        return False
    return all(_tolerated(t, tolerations) for t in node.taints)


def worker_pools(spec: JobSpec, fallback_active: bool) -> list[Pool]:
    """Spot pools take workers; on-demand pools serve the rendezvous and the fallback. A job that lists no
    spot pool at all runs on its on-demand pools directly."""
    spot = [p for p in spec.pools if p.spot]
    pools = spot or list(spec.pools)
    if fallback_active and spec.fallback and spot:
        pools.append(spec.pool(spec.fallback.pool))
    return pools


def price_allowed(spec: JobSpec, pool: Pool) -> bool:
    ratio = spec.max_spot_price_ratio
    if ratio is None or not pool.spot or pool.hourly_price is None or not pool.on_demand_hourly_price:
        return True
    return pool.hourly_price <= ratio * pool.on_demand_hourly_price


def worker_request(spec: JobSpec) -> Resources:
    return pod_requests(spec.template.get("spec") or {})


def autoscaled_zones(pool: Pool, node_pools: Mapping[str, NodePoolView], nodes: Sequence[NodeView],
                     request: Resources) -> tuple[str, ...]:
    """Zones where the pool can get new nodes. The spec's list wins over the NodePool's zone requirement (it
    may narrow it); a Karpenter NodePool without one lets Karpenter use any zone the cluster's nodes are in.
    Empty for a pool that has only the nodes it has, and for a NodePool that cannot launch a worker's node
    (capacity type or instance type excluded, limits reached)."""
    node_pool = node_pool_of(pool.node_selector, node_pools)
    if node_pool is not None and not node_pool.can_launch(pool.capacity_type, pool.node_selector, request):
        return ()
    if pool.zones:
        return pool.zones
    if node_pool is None:
        return ()
    if node_pool.zones is not None:
        return node_pool.zones
    return tuple(sorted({n.zone for n in nodes if n.zone}))


def offerings(
    spec: JobSpec,
    nodes: Iterable[NodeView],
    workers: Sequence[PodView],
    cooldowns: Mapping[str, datetime.datetime],
    now: datetime.datetime,
    fallback_active: bool,
    *,
    node_pools: Mapping[str, NodePoolView] | None = None,
    room: Mapping[str, NodeRoom] | None = None,
) -> list[Offering]:
    """Free capacity per (pool, zone), minus pods already on their way there (pending, not yet bound).

    A node is free when it accepts the pool's pods, holds no worker of this job (one per node), and, where
    ``room`` knows it, its allocatable resources minus the requests of all pods on it fit a worker. An
    autoscaled pool adds up to ``spec.max_nodes`` nodes per zone it can provision in."""
    occupied = {w.node for w in workers if w.active and w.node}
    pending = Counter((w.pool, w.zone) for w in workers if w.active and not w.node)
    request = worker_request(spec)
    node_list = list(nodes)
    result = []
    for pool in worker_pools(spec, fallback_active):
        if not price_allowed(spec, pool):
            continue
        tolerations = pool_tolerations(spec, pool)
        free: Counter[str] = Counter()
        for node in node_list:
            if node.name in occupied or not node.zone or not pool.matches(dict(node.labels)):
                continue
            fits = room is None or node.name not in room or room[node.name].fits(request)
            if fits and node_accepts(node, tolerations):
                free[node.zone] += 1
        scalable = autoscaled_zones(pool, node_pools or {}, node_list, request)
        for zone in sorted(set(free) | set(scalable)):
            until = cooldowns.get(cooldown_key(pool.name, zone))
            if until and until > now:
                continue
            existing = free[zone] - pending[(pool.name, zone)]
            count = existing + (spec.max_nodes if zone in scalable else 0)
            if count > 0:
                result.append(Offering(pool.name, zone, count, max(existing, 0)))
    return result


def _pool_room(spec: JobSpec, pool_name: str, per_pool: Counter[str]) -> float:
    pool = spec.pool(pool_name)
    cap = pool.max_nodes
    if spec.fallback and pool_name == spec.fallback.pool and spec.fallback.max_nodes is not None:
        cap = spec.fallback.max_nodes if cap is None else min(cap, spec.fallback.max_nodes)
    return float("inf") if cap is None else cap - per_pool[pool_name]


def choose(spec: JobSpec, available: Sequence[Offering], workers: Sequence[PodView], count: int) -> list[Choice]:
    """Picks up to ``count`` (pool, zone) slots from ``available``.

    Spread: each new worker goes to the zone with the fewest workers of the job, and within it to the pool
    furthest below its weighted share; spot pools before the fallback pool. Pack: the zone that already holds
    the most workers (else the one with the most room) is filled first, overflowing only when it is full,
    since training below min is worse than crossing a zone.
    """
    active = [w for w in workers if w.active]
    per_zone = Counter(w.zone for w in active)
    per_pool = Counter(w.pool for w in active)
    room = {(o.pool, o.zone): o.free_nodes for o in available}
    order = {p.name: i for i, p in enumerate(spec.pools)}
    fallback = spec.fallback.pool if spec.fallback else None
    pack_zone = None
    if spec.zones == "Pack":
        zone_room = Counter[str]()
        for o in available:
            zone_room[o.zone] += o.free_nodes
        ranked = sorted(zone_room, key=lambda z: (-per_zone[z], -zone_room[z], z))
        pack_zone = ranked[0] if ranked else None

    choices: list[Choice] = []
    for _ in range(count):
        candidates = [k for k, n in room.items() if n > 0 and _pool_room(spec, k[0], per_pool) > 0]
        if not candidates:
            break

        def rank(key: tuple[str, str]) -> tuple[object, ...]:
            pool_name, zone = key
            weight = spec.pool(pool_name).weight
            zone_rank = (0 if zone == pack_zone else 1, 0) if pack_zone else (per_zone[zone], 0)
            return (pool_name == fallback, *zone_rank, per_pool[pool_name] / weight, order[pool_name], zone)

        pool_name, zone = min(candidates, key=rank)
        choices.append(Choice(pool_name, zone))
        room[(pool_name, zone)] -= 1
        per_zone[zone] += 1
        per_pool[pool_name] += 1
    return choices


def spot_capacity(available: Sequence[Offering], spec: JobSpec) -> int:
    return sum(o.free_nodes for o in available if spec.pool(o.pool).spot)


def spot_nodes_free(available: Sequence[Offering], spec: JobSpec) -> int:
    """Spot nodes that exist and could take a worker now: capacity that really arrived, not capacity hoped for."""
    return sum(o.existing for o in available if spec.pool(o.pool).spot)
