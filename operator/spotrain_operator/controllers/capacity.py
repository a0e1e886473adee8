"""kopf indexes for placement on autoscaled pools: Karpenter NodePools, and the room left on every node.

- ``karpenter_node_pools``: karpenter.sh/v1 NodePools by name (zones, capacity types, limits and usage). Where
  Karpenter is not installed the resource does not exist and kopf serves the other handlers without it.
- ``pod_requests_by_node`` and ``allocatable_by_node``: what the pods bound to each node request (every pod the
  operator can see, whoever owns it) and what each node can hold, so that a full node is not counted as free.

A NodePool change wakes every job: a raised limit is spot capacity coming back. Importing this module registers
the handlers; the job daemon takes the indexes from its kwargs (``CapacityIndexes.from_kwargs``) and passes
``observe()`` into ``Observed``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import kopf

from spotrain_operator import wellknown as wk
from spotrain_operator.core.provisioning import NodePoolView, NodeRoom, bound_pod_requests

PodRequests = dict[str, Decimal]


@kopf.index(wk.KARPENTER_GROUP, wk.KARPENTER_VERSION, wk.KARPENTER_NODEPOOLS)
async def karpenter_node_pools(name: str, body: kopf.Body, **_: Any) -> dict[str, NodePoolView]:
    return {name: NodePoolView.from_body(body)}


@kopf.on.event(wk.KARPENTER_GROUP, wk.KARPENTER_VERSION, wk.KARPENTER_NODEPOOLS)
async def node_pool_changed(**_: Any) -> None:
    from spotrain_operator.controllers.jobs import runtime  # jobs imports this module for CapacityIndexes

    runtime().wake_all()


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
