"""The policies compared on one trace: each is a SpotTrainingJob spec (parsed by the operator's own
``api.parse_spec``) plus what its trainers do on a checkpoint request, a SIGTERM and a lost peer.

* ``on_demand``: the full-size job on on-demand nodes, synchronous checkpoints every 30 minutes.
* ``baseline_ckpt30``: common practice on spot: a fixed-size job (min = max), a synchronous checkpoint every
  30 minutes, every loss restarts every worker from the last checkpoint once the world is full again; no
  notice handling, no fallback, no cooldown.
* ``elastic_no_notice``: torchrun elastic (min..max) that ignores notices, as Kubeflow's elastic PyTorchJob
  does: a loss or a join restarts the survivors from the last checkpoint (30-minute interval).
* ``spotrain``: everything spotrain does: notices from every source, a coordinated checkpoint before the
  doomed workers go, checkpoint-on-SIGTERM for joins, the auto (Young/Daly) interval with asynchronous
  checkpoints, zone spreading, cooldowns, and the on-demand fallback with return to spot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from spotrain_operator.api import SOURCE_NAMES, JobSpec, parse_spec
from spotrain_operator.simulate.market import Market

POOL_LABEL = "sim.spotrain.dev/pool"
CAPACITY_LABEL = "karpenter.sh/capacity-type"
FIXED_INTERVAL_S = 1800.0


@dataclass(frozen=True)
class Policy:
    name: str
    acts_on_notice: bool  # the operator drains on notices and the trainer checkpoints on request / SIGTERM
    elastic: bool  # min < max: survivors carry on at a smaller world size
    fallback: bool
    on_demand_only: bool = False
    # Changes to the spec as ("spec.path.to.field", value), applied last (spotrain simulate --set).
    spec_overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def checkpoint_on_sigterm(self) -> bool:
        return self.acts_on_notice


POLICIES: dict[str, Policy] = {
    "on_demand": Policy("on_demand", acts_on_notice=False, elastic=False, fallback=False, on_demand_only=True),
    "baseline_ckpt30": Policy("baseline_ckpt30", acts_on_notice=False, elastic=False, fallback=False),
    "elastic_no_notice": Policy("elastic_no_notice", acts_on_notice=False, elastic=True, fallback=False),
    "spotrain": Policy("spotrain", acts_on_notice=True, elastic=True, fallback=True),
}
SPOT_POLICIES = ("baseline_ckpt30", "elastic_no_notice", "spotrain")


def policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None


def spec_body(p: Policy, market: Market, nodes: int) -> dict[str, Any]:
    """The SpotTrainingJob ``spec`` of policy ``p`` for a job of ``nodes`` workers on ``market``: defaults as the
    CRD fills them except where the policy differs."""
    spot_pools = [] if p.on_demand_only else [
        {"name": sp.name, "nodeSelector": {POOL_LABEL: sp.name}, "capacityType": "spot",
         "hourlyPrice": str(sp.hourly_price), "onDemandHourlyPrice": str(sp.on_demand_hourly_price)}
        for sp in market.spot_pools
    ]
    on_demand = {"name": market.on_demand_pool, "nodeSelector": {POOL_LABEL: market.on_demand_pool},
                 "capacityType": "on-demand", "hourlyPrice": str(market.on_demand_hourly_price),
                 "onDemandHourlyPrice": str(market.on_demand_hourly_price)}
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "trainer", "image": "spotrain/simulated-trainer"}]}},
        "elastic": {"minNodes": max(1, nodes // 2) if p.elastic else nodes, "maxNodes": nodes},
        "placement": {"zones": "Spread", "pools": [*spot_pools, on_demand]},
        "checkpoint": {"uri": "s3://simulated/job",
                       "interval": "auto" if p.acts_on_notice else f"{FIXED_INTERVAL_S:.0f}s"},
        "budgets": {"maxFailures": 1_000_000},
    }
    if p.fallback:
        spec["fallback"] = {"pool": market.on_demand_pool, "maxNodes": nodes}
    if not p.acts_on_notice:
        # Nothing reads notices: only a node that is gone or NotReady is seen, and nothing avoids a pool/zone.
        spec["termination"] = {"sources": {s: s == "nodeHealth" for s in SOURCE_NAMES}}
        spec["placement"]["cooldown"] = "0s"
    return spec


def parse_override(text: str) -> tuple[str, Any]:
    """``elastic.scaleUpWindow=60s`` -> ("elastic.scaleUpWindow", "60s"); the value is read as YAML."""
    path, sep, value = text.partition("=")
    if not sep or not path.strip() or any(not part for part in path.strip().split(".")):
        raise ValueError(f"{text!r}: write FIELD=VALUE with the field as a dotted path of the spec, e.g. "
                         "fallback.returnToSpot=false")
    return path.strip(), yaml.safe_load(value)


def apply_overrides(body: dict[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    for path, value in overrides:
        *parents, leaf = path.split(".")
        node = body
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"spec.{path}: spec.{part} is not an object")
            node = child
        node[leaf] = value
    return body


def job_spec(p: Policy, market: Market, nodes: int) -> JobSpec:
    """The policy's spec, parsed by the operator's own parser (errors name the field)."""
    return parse_spec(apply_overrides(spec_body(p, market, nodes), p.spec_overrides))
