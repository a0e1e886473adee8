"""A typed view of a SpotTrainingJob's spec.

The CRD schema and its CEL rules reject bad input at admission and fill the defaults; this module turns the
admitted object into plain dataclasses for the core. What the schema cannot say (a duration that overflows, a
price that is not a number in a ConfigMap) raises ``SpecError`` naming the field and the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from spotrain_protocol import RENDEZVOUS_PORT

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class SpecError(ValueError):
    def __init__(self, field_path: str, problem: str, fix: str):
        super().__init__(f"{field_path}: {problem}; {fix}")
        self.field_path = field_path


# No duration in a spec means more than a year: larger ones are typos, and would overflow the datetimes they are
# added to (the CRD's schema bounds each field lower still; this guards objects admitted before it did).
MAX_DURATION_SECONDS = 366 * 24 * 3600.0


def parse_duration(value: str, field_path: str) -> float:
    """Go-style durations as the CRD accepts them ("30s", "1m30s", "1.5h") -> seconds."""
    if not isinstance(value, str):
        raise SpecError(field_path, f"{value!r} is not a duration", "write it like 30s, 5m or 1h30m")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise SpecError(field_path, f"{value!r} is not a duration", "write it like 30s, 5m or 1h30m")
    if total > MAX_DURATION_SECONDS:
        raise SpecError(field_path, f"{value!r} is longer than a year", "write a shorter duration, such as 5m or 2h")
    return total


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"key": self.key, "operator": self.operator, "value": self.value, "effect": self.effect,
               "tolerationSeconds": self.toleration_seconds}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Pool:
    name: str
    node_selector: dict[str, str]
    capacity_type: str  # "spot" | "on-demand"
    weight: int = 1
    max_nodes: int | None = None
    tolerations: tuple[Toleration, ...] = ()
    hourly_price: float | None = None
    on_demand_hourly_price: float | None = None
    # Autoscaled pools: zones where new nodes can be provisioned (the spec's list wins over a Karpenter
    # NodePool's requirements), and how long a worker may wait for its node before the zone is given up.
    zones: tuple[str, ...] = ()
    provisioning_timeout_seconds: float = 300.0

    @property
    def spot(self) -> bool:
        return self.capacity_type == "spot"

    def matches(self, node_labels: dict[str, str]) -> bool:
        return all(node_labels.get(k) == v for k, v in self.node_selector.items())


@dataclass(frozen=True)
class Fallback:
    pool: str
    after_seconds: float = 120.0
    max_nodes: int | None = None
    return_to_spot: bool = True


@dataclass(frozen=True)
class Checkpoint:
    uri: str
    interval: str = "auto"  # "auto" or a duration as written
    min_interval_seconds: float = 60.0
    max_interval_seconds: float = 3600.0
    keep_last: int = 3
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    credentials_secret: str | None = None
    volume_claim: str | None = None
    staging_size_limit: str | None = None  # the staging emptyDir's sizeLimit (a quantity)

    @property
    def interval_seconds(self) -> float | None:
        return None if self.interval == "auto" else parse_duration(self.interval, "spec.checkpoint.interval")


SOURCE_NAMES = (
    "nodeTerminationHandler",
    "karpenter",
    "gke",
    "aks",
    "clusterAutoscaler",
    "agent",
    "awsQueue",
    "nodeHealth",
    "podDisruption",
)


@dataclass(frozen=True)
class Termination:
    safety_margin_seconds: float = 10.0
    proactive_on_rebalance: bool = False
    sources: frozenset[str] = frozenset(SOURCE_NAMES)


@dataclass(frozen=True)
class JobSpec:
    template: dict[str, Any]
    min_nodes: int
    max_nodes: int
    target_nodes: int
    nproc_per_node: int
    scale_up_window_seconds: float
    pools: tuple[Pool, ...]
    zones: str  # "Spread" | "Pack"
    cooldown_seconds: float
    max_spot_price_ratio: float | None
    pricing_config_map: str | None
    fallback: Fallback | None
    checkpoint: Checkpoint
    termination: Termination
    rendezvous_pool: str | None
    rendezvous_port: int
    rendezvous_image: str | None
    max_preemptions: int | None
    max_failures: int
    suspend: bool
    ttl_seconds_after_finished: int | None

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def capacity_type(self, pool_name: str) -> str | None:
        """``spot`` or ``on-demand`` for a pool of the spec; None for one it no longer has."""
        pool = next((p for p in self.pools if p.name == pool_name), None)
        return None if pool is None else ("spot" if pool.spot else "on-demand")

    @property
    def rendezvous_pool_name(self) -> str:
        """The pool that hosts the rendezvous: as asked, else the fallback pool, else the first on-demand pool,
        else (a spot-only job) the first pool."""
        if self.rendezvous_pool:
            return self.rendezvous_pool
        if self.fallback:
            return self.fallback.pool
        for p in self.pools:
            if not p.spot:
                return p.name
        return self.pools[0].name

    @property
    def trainer_image(self) -> str:
        return str(self.template["spec"]["containers"][0]["image"])


def _price(value: Any, field_path: str) -> float | None:
    if value is None:
        return None
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise SpecError(field_path, f"{value!r} is not a price", "write a decimal such as 0.12") from None
    if not math.isfinite(price) or price < 0:
        raise SpecError(field_path, f"{value!r} is not a price", "write a finite, non-negative decimal such as 0.12")
    return price


def parse_spec(spec: dict[str, Any], pricing: dict[str, str] | None = None) -> JobSpec:
    """``pricing`` is the data of the job's pricing ConfigMap (POOL.hourlyPrice, POOL.onDemandHourlyPrice);
    prices in the spec win over it."""
    pricing = pricing or {}
    elastic = spec["elastic"]
    placement = spec["placement"]
    pools = []
    for i, p in enumerate(placement["pools"]):
        where = f"spec.placement.pools[{i}]"
        pools.append(
            Pool(
                name=p["name"],
                node_selector=dict(p["nodeSelector"]),
                capacity_type=p["capacityType"],
                weight=int(p.get("weight", 1)),
                max_nodes=p.get("maxNodes"),
                tolerations=tuple(
                    Toleration(t.get("key"), t.get("operator"), t.get("value"), t.get("effect"),
                               t.get("tolerationSeconds"))
                    for t in p.get("tolerations", [])
                ),
                hourly_price=_price(
                    p.get("hourlyPrice", pricing.get(f"{p['name']}.hourlyPrice")), f"{where}.hourlyPrice"
                ),
                on_demand_hourly_price=_price(
                    p.get("onDemandHourlyPrice", pricing.get(f"{p['name']}.onDemandHourlyPrice")),
                    f"{where}.onDemandHourlyPrice",
                ),
                zones=tuple(p.get("zones", ())),
                provisioning_timeout_seconds=parse_duration(p.get("provisioningTimeout", "5m"),
                                                            f"{where}.provisioningTimeout"),
            )
        )
    fallback = None
    if "fallback" in spec:
        fb = spec["fallback"]
        fallback = Fallback(
            pool=fb["pool"],
            after_seconds=parse_duration(fb.get("after", "2m"), "spec.fallback.after"),
            max_nodes=fb.get("maxNodes"),
            return_to_spot=bool(fb.get("returnToSpot", True)),
        )
    ck = spec["checkpoint"]
    s3 = ck.get("s3", {})
    checkpoint = Checkpoint(
        uri=ck["uri"],
        interval=ck.get("interval", "auto"),
        min_interval_seconds=parse_duration(ck.get("minInterval", "1m"), "spec.checkpoint.minInterval"),
        max_interval_seconds=parse_duration(ck.get("maxInterval", "1h"), "spec.checkpoint.maxInterval"),
        keep_last=int(ck.get("keepLast", 3)),
        s3_endpoint_url=s3.get("endpointURL"),
        s3_region=s3.get("region"),
        credentials_secret=s3.get("credentialsSecret"),
        volume_claim=ck.get("volume", {}).get("claimName"),
        staging_size_limit=str(ck["stagingSizeLimit"]) if ck.get("stagingSizeLimit") is not None else None,
    )
    if checkpoint.interval != "auto":
        parse_duration(checkpoint.interval, "spec.checkpoint.interval")
    term = spec.get("termination", {})
    sources = term.get("sources", {})
    termination = Termination(
        safety_margin_seconds=parse_duration(term.get("safetyMargin", "10s"), "spec.termination.safetyMargin"),
        proactive_on_rebalance=bool(term.get("proactiveOnRebalance", False)),
        sources=frozenset(s for s in SOURCE_NAMES if sources.get(s, True)),
    )
    rendezvous = spec.get("rendezvous", {})
    budgets = spec.get("budgets", {})
    max_nodes = int(elastic["maxNodes"])
    return JobSpec(
        template=spec["template"],
        min_nodes=int(elastic.get("minNodes", 1)),
        max_nodes=max_nodes,
        target_nodes=int(elastic.get("targetNodes", max_nodes)),
        nproc_per_node=int(elastic.get("nprocPerNode", 1)),
        scale_up_window_seconds=parse_duration(elastic.get("scaleUpWindow", "30s"), "spec.elastic.scaleUpWindow"),
        pools=tuple(pools),
        zones=placement.get("zones", "Spread"),
        cooldown_seconds=parse_duration(placement.get("cooldown", "5m"), "spec.placement.cooldown"),
        max_spot_price_ratio=placement.get("maxSpotPriceRatio"),
        pricing_config_map=placement.get("pricingConfigMap"),
        fallback=fallback,
        checkpoint=checkpoint,
        termination=termination,
        rendezvous_pool=rendezvous.get("pool"),
        rendezvous_port=int(rendezvous.get("port", RENDEZVOUS_PORT)),
        rendezvous_image=rendezvous.get("image"),
        max_preemptions=budgets.get("maxPreemptions"),
        max_failures=int(budgets.get("maxFailures", 3)),
        suspend=bool(spec.get("suspend", False)),
        ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
    )
