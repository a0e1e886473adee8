"""kopf indexes for placement on autoscaled pools: Karpenter NodePools, and the room left on every node.

- ``karpenter_node_pools``: karpenter.sh/v1 NodePools by name (zones, capacity types, limits and usage). Where
  Karpenter is not installed the resource does not exist and kopf serves the other handlers without it.
- ``pod_requests_by_node`` and ``allocatable_by_node``: what the pods bound to each node request (every pod the
  operator can see, whoever owns it) and what each node can hold, so that a full node is not counted as free.

A NodePool change wakes every job: a raised limit is spot capacity coming back. Importing this module registers
the handlers; the job daemon takes the indexes from its kwargs (``CapacityIndexes.from_kwargs``) and passes
``observe()`` into ``Observed``, and ``unservable()``: what Karpenter says of the job's pending pods.

Karpenter's FailedScheduling Events are read with a list narrowed by the API server (reason and source), in the
job's namespace, only while one of its pods waits for a Karpenter node; they are not watched: a watch of every
Event in the cluster would cost far more than this, and the job's resync brings the answer within seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from spotrain_operator import wellknown as wk
from spotrain_operator.api import JobSpec
from spotrain_operator.cluster import Cluster
from spotrain_operator.core.model import PodView
from spotrain_operator.core.provisioning import (
    KARPENTER_EVENTS_SELECTOR,
    PROBE_ROLE,
    NodePoolView,
    NodeRoom,
    bound_pod_requests,
    node_pool_of,
    pods_karpenter_cannot_serve,
)

PodRequests = dict[str, Decimal]
log = logging.getLogger("spotrain.capacity")
_REFUSALS_LOGGED: set[int | None] = set()


@kopf.index(wk.KARPENTER_GROUP, wk.KARPENTER_VERSION, wk.KARPENTER_NODEPOOLS)
async def karpenter_node_pools(name: str, body: kopf.Body, **_: Any) -> dict[str, NodePoolView]:
    return {name: NodePoolView.from_body(body)}


@kopf.on.event(wk.KARPENTER_GROUP, wk.KARPENTER_VERSION, wk.KARPENTER_NODEPOOLS)
async def node_pool_changed(memo: Any, **_: Any) -> None:
    memo.wake_all()  # the operator's Runtime (controllers/jobs.py, which imports this module)


@kopf.index("pods")
async def pod_requests_by_node(body: kopf.Body, **_: Any) -> dict[str, PodRequests] | None:
    bound = bound_pod_requests(body)
    if bound is None:
        return None
    node, requests = bound
    return {node: requests}


@kopf.index("nodes")
async def allocatable_by_node(name: str, status: kopf.Status, **_: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(status.get("allocatable") or {})}


@dataclass(frozen=True)
class CapacityIndexes:
    """The three indexes (kopf.Index is a mapping of key to the collection of values indexed under it)."""

    node_pools: Mapping[str, Collection[NodePoolView]]
    allocatable: Mapping[str, Collection[dict[str, Any]]]
    requests: Mapping[str, Collection[PodRequests]]

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> CapacityIndexes:
        """kopf passes every index to every handler, by the indexing function's name."""
        return cls(kwargs["karpenter_node_pools"], kwargs["allocatable_by_node"], kwargs["pod_requests_by_node"])

    def observe(self) -> dict[str, Any]:
        """The ``node_pools`` and ``node_room`` fields of ``Observed``."""
        pools = {name: next(iter(views)) for name, views in self.node_pools.items() if views}
        rooms = {}
        for name, values in self.allocatable.items():
            allocatable = next(iter(values), None)
            if allocatable is None:
                continue
            rooms[name] = NodeRoom.of(allocatable, self.requests.get(name, []))
        return {"node_pools": pools, "node_room": rooms}


def unservable(cluster: Cluster, namespace: str, spec: JobSpec, pods: Sequence[PodView],
               node_pools: Mapping[str, NodePoolView]) -> dict[str, str]:
    """The ``unservable`` field of ``Observed``: the job's pending workers and probes that Karpenter reports it
    cannot provision for, with its reason. Only pods the scheduler found Unschedulable are asked about (Karpenter
    provisions for no other), and only those of pools that select a NodePool it has: Karpenter's verdict on a pod
    meant for a pool it does not manage (a cluster-autoscaler node group, a static pool) says nothing."""
    pools = {p.name: p for p in spec.pools}
    waiting: dict[str, NodePoolView] = {}
    for pod in pods:
        pool = pools.get(pod.pool)
        if pool is None or pod.role not in ("worker", PROBE_ROLE) or not pod.active or pod.node \
                or not pod.unschedulable_since:
            continue
        if (node_pool := node_pool_of(pool.node_selector, node_pools)) is not None:
            waiting[pod.name] = node_pool
    if not waiting:
        return {}
    try:
        events = cluster.list_events(namespace, KARPENTER_EVENTS_SELECTOR)
    except ApiException as e:
        # An extra signal, not a requirement: without it (a chart older than the events rule, an API hiccup) the
        # provisioning timeout still moves the pod, so the pass goes on. Said once per kind of refusal.
        if e.status not in _REFUSALS_LOGGED:
            _REFUSALS_LOGGED.add(e.status)
            log.warning("cannot list Karpenter's events in %s (%s %s); pending pods wait for their provisioning "
                        "timeout instead", namespace, e.status, e.reason)
        return {}
    return pods_karpenter_cannot_serve(events, waiting)
