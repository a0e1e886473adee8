"""Spot markets: pools, zones, prices, notice lengths, and the traces of capacity lost and regained.

A trace is a list of :class:`MarketEvent` s: at ``time_s`` a pool/zone loses ``lost`` nodes (each with
``notice_s`` seconds of warning; 0 = none) or gains ``gained`` nodes of capacity back. Traces come from the
built-in generator (:func:`generate`, seeded) or from a CSV file (:func:`read_csv`, format below), so every
policy runs on the same trace.

Where the numbers come from:

* Notice lengths: AWS gives a two-minute Spot Instance interruption notice (EC2 user guide, "Spot Instance
  interruption notices"); GCP Spot VMs and Azure Spot VMs get 30 s (GCP "Preemption process" and Azure
  Scheduled Events ``Preempt``, "minimum 30 seconds"). The same values are in ``core/termination.py``.
* Rates: issue 10 sets the scenarios' hazards, "calm about 0.05 and volatile about 0.6 preemptions per
  node-hour, batches of about 2 nodes per event". They are stress levels for GPU-class pools, not a
  measurement: AWS's Spot Instance Advisor publishes only monthly "frequency of interruption" bands (<5 %,
  5-10 %, 10-15 %, 15-20 %, >20 % of instances interrupted per month, i.e. below about 0.0003 per node-hour even
  in the worst band) for typical pools; GPU spot pools are far more volatile, which is what papers on training
  over spot capacity (Bamboo, NSDI '23; Can't Be Late, NSDI '24) report. Replay a measured trace with
  ``--trace`` to replace these assumptions: SkyPilot's public ``spot-traces`` (availability and preemptions of
  AWS p3 / GCP instances every 300 s) convert to the CSV format below with one row per change.
* Prices: m5.2xlarge in us-east-1, on-demand $0.384/h (AWS price list); spot at 35 % of that, the 65 %
  discount the issue's cost goal assumes. GCP n2-standard-8 on-demand $0.3885/h, spot at 35 % as well.
* Capacity that vanishes comes back after an exponentially distributed time (mean ``capacity_return_mean_s``);
  zone bursts reclaim a share of one zone's spot nodes at once (rare; both are assumptions, stated in the
  market's JSON and changeable).

CSV trace format (``--trace FILE``), a header line then one row per change::

    time_s,pool,zone,lost,gained,notice_s
    600,spot-a,us-east-1a,2,0,120      # 2 nodes of pool spot-a in us-east-1a get a 120 s notice at t=600 s
    660,*,us-east-1b,1,0,0             # '*': any spot pool of the zone; notice 0 = lost without warning
    2400,spot-a,us-east-1a,0,2,        # capacity back: 2 nodes can be provisioned again

``time_s`` counts from the start of the job; ``notice_s`` empty means the market's default notice. Lines
starting with ``#`` are comments.
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

NOTICE_SECONDS = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}
# What spotrain-agent sets as the taint value for a preemption notice of each cloud (agent/node_marker.py).
AGENT_NOTICE_KIND = {"aws": "aws-spot-itn", "gcp": "gcp-preempted", "azure": "azure-preempt"}
ANY = "*"


@dataclass(frozen=True)
class SpotPool:
    name: str
    instance_type: str
    nodes_per_zone: int
    hourly_price: float
    on_demand_hourly_price: float


@dataclass(frozen=True)
class Market:
    name: str
    cloud: str  # aws | gcp | azure
    zones: tuple[str, ...]
    spot_pools: tuple[SpotPool, ...]
    on_demand_pool: str
    on_demand_instance_type: str
    on_demand_hourly_price: float
    on_demand_nodes_per_zone: int
    preemptions_per_node_hour: float
    mean_batch: float = 2.0  # nodes per preemption event
    # The node-hour hazard applies to the nodes a job runs on: events in a pool/zone arrive at
    # rate * job_nodes_per_pool_zone / mean_batch, and hit the job's nodes there first.
    job_nodes: int = 32
    zone_bursts_per_day: float = 0.0  # a zone losing zone_burst_share of its spot nodes at once
    zone_burst_share: float = 0.5
    capacity_return_mean_s: float = 1800.0
    unannounced_share: float = 0.0  # share of preemptions that come without any notice

    @property
    def notice_s(self) -> float:
        return NOTICE_SECONDS[self.cloud]

    def pool_zones(self) -> list[tuple[str, str]]:
        return [(p.name, z) for p in self.spot_pools for z in self.zones]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["notice_s"] = self.notice_s
        return out


@dataclass(frozen=True, order=True)
class MarketEvent:
    time_s: float
    pool: str = field(compare=False)
    zone: str = field(compare=False)
    lost: int = field(default=0, compare=False)
    gained: int = field(default=0, compare=False)
    notice_s: float | None = field(default=None, compare=False)  # None: the market's default

    def describe(self) -> str:
        if self.lost:
            warn = "no notice" if self.notice_s == 0 else f"{self.notice_s:.0f} s notice"
            return f"{self.pool}/{self.zone} loses {self.lost} ({warn})"
        return f"{self.pool}/{self.zone} regains {self.gained}"


def _aws_market(name: str, nodes: int, rate: float) -> Market:
    per = max(2, math.ceil(1.5 * nodes / 6))  # 50 % headroom over the job, spread over 2 pools x 3 zones
    return Market(
        name=name, cloud="aws", zones=("us-east-1a", "us-east-1b", "us-east-1c"),
        spot_pools=(SpotPool("spot-m5", "m5.2xlarge", per, 0.1344, 0.384),
                    SpotPool("spot-m6i", "m6i.2xlarge", per, 0.1344, 0.384)),
        on_demand_pool="on-demand", on_demand_instance_type="m5.2xlarge", on_demand_hourly_price=0.384,
        on_demand_nodes_per_zone=math.ceil(nodes / 3), preemptions_per_node_hour=rate, job_nodes=nodes,
        zone_bursts_per_day=1.0 if rate >= 0.3 else 0.0,
    )


def _gcp_market(name: str, nodes: int, rate: float) -> Market:
    per = max(2, math.ceil(1.5 * nodes / 6))
    return Market(
        name=name, cloud="gcp", zones=("us-central1-a", "us-central1-b", "us-central1-c"),
        spot_pools=(SpotPool("gke-spot-n2", "n2-standard-8", per, 0.1360, 0.3885),
                    SpotPool("gke-spot-n2d", "n2d-standard-8", per, 0.1360, 0.3885)),
        on_demand_pool="on-demand", on_demand_instance_type="n2-standard-8", on_demand_hourly_price=0.3885,
        on_demand_nodes_per_zone=math.ceil(nodes / 3), preemptions_per_node_hour=rate, job_nodes=nodes,
        zone_bursts_per_day=1.0 if rate >= 0.3 else 0.0,
    )


# The scenarios bench/results.json reports (stable names: <cloud>_<nodes>n_<preemptions per node-hour>ph).
SCENARIOS: dict[str, Market] = {
    "aws_32n_0.6ph": _aws_market("aws_32n_0.6ph", 32, 0.6),
    "aws_8n_0.06ph": _aws_market("aws_8n_0.06ph", 8, 0.06),
    "gcp_32n_0.6ph": _gcp_market("gcp_32n_0.6ph", 32, 0.6),
    "aws_32n_0.05ph": _aws_market("aws_32n_0.05ph", 32, 0.05),
}


def scenario(name: str) -> Market:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None


def generate(market: Market, horizon_s: float, seed: int) -> list[MarketEvent]:
    """A seeded trace over ``[0, horizon_s)``: batched losses per pool/zone (Poisson arrivals, batch size
    1 + Poisson(mean_batch - 1)), zone bursts, and each lost node's capacity back after an exponential time.

    Coupled across rates: with the same seed, a market with a higher rate yields a superset of the events of
    one with a lower rate (every pool/zone draws its candidate arrivals at the highest rate, 2.0 per node-hour,
    and keeps each with probability rate / 2.0), so comparisons across rates differ only by the added events.
    """
    rng = random.Random(seed)
    events: list[MarketEvent] = []
    pool_zones = market.pool_zones()
    job_per_pz = market.job_nodes / max(1, len(pool_zones))
    ceiling = max(2.0, market.preemptions_per_node_hour)
    for pool, zone in pool_zones:
        sub = random.Random(rng.getrandbits(64))
        rate = ceiling * job_per_pz / market.mean_batch / 3600.0  # candidate events per second
        t = 0.0
        while True:
            t += sub.expovariate(rate) if rate > 0 else math.inf
            if t >= horizon_s:
                break
            keep, batch_u, notice_u, back_u = sub.random(), sub.random(), sub.random(), sub.random()
            if keep >= market.preemptions_per_node_hour / ceiling:
                continue
            lost = 1 + _poisson_quantile(market.mean_batch - 1.0, batch_u)
            notice = 0.0 if notice_u < market.unannounced_share else market.notice_s
            events.append(MarketEvent(round(t, 3), pool, zone, lost=lost, notice_s=notice))
            back = -math.log(1.0 - back_u) * market.capacity_return_mean_s
            events.append(MarketEvent(round(t + notice + back, 3), pool, zone, gained=lost))
    bursts = random.Random(rng.getrandbits(64))
    if market.zone_bursts_per_day > 0:
        t = 0.0
        while True:
            t += bursts.expovariate(market.zone_bursts_per_day / 86400.0)
            if t >= horizon_s:
                break
            zone = market.zones[bursts.randrange(len(market.zones))]
            back = bursts.expovariate(1.0 / market.capacity_return_mean_s)
            for p in market.spot_pools:
                lost = max(1, round(market.zone_burst_share * p.nodes_per_zone))
                events.append(MarketEvent(round(t, 3), p.name, zone, lost=lost, notice_s=market.notice_s))
                events.append(MarketEvent(round(t + market.notice_s + back, 3), p.name, zone, gained=lost))
    return sorted(events)


def _poisson_quantile(mean: float, u: float) -> int:
    """The Poisson(mean) value at quantile ``u`` (inverse CDF), so one uniform draw decides a batch size."""
    if mean <= 0:
        return 0
    k, p = 0, math.exp(-mean)
    cumulative = p
    while u > cumulative and k < 1000:
        k += 1
        p *= mean / k
        cumulative += p
    return k


TRACE_COLUMNS = ("time_s", "pool", "zone", "lost", "gained", "notice_s")


class TraceError(ValueError):
    pass


def read_csv(text: str, market: Market, source: str = "trace") -> list[MarketEvent]:
    """Parses the CSV trace format of this module's docstring; errors name the line and the column."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    missing = [c for c in TRACE_COLUMNS[:5] if c not in (reader.fieldnames or [])]
    if missing:
        raise TraceError(f"{source}: header must be {','.join(TRACE_COLUMNS)} (missing {', '.join(missing)})")
    pools = {p.name for p in market.spot_pools} | {market.on_demand_pool, ANY}
    zones = set(market.zones) | {ANY}
    events = []
    for number, row in enumerate(reader, start=2):
        where = f"{source} line {number}"

        def number_of(column: str, kind: type, row: dict[str, str] = row, where: str = where) -> Any:
            value = (row.get(column) or "").split("#", 1)[0].strip()
            if value == "" and column in ("lost", "gained"):
                return kind(0)
            try:
                parsed = kind(value)
            except ValueError:
                raise TraceError(f"{where}: {column} {value!r} is not a {kind.__name__}") from None
            if parsed < 0:
                raise TraceError(f"{where}: {column} must not be negative")
            return parsed

        pool, zone = (row.get("pool") or "").strip(), (row.get("zone") or "").strip()
        if pool not in pools:
            raise TraceError(f"{where}: pool {pool!r} is not in market {market.name} ({', '.join(sorted(pools))})")
        if zone not in zones:
            raise TraceError(f"{where}: zone {zone!r} is not in market {market.name} ({', '.join(sorted(zones))})")
        notice_text = (row.get("notice_s") or "").split("#", 1)[0].strip()
        events.append(MarketEvent(number_of("time_s", float), pool, zone, number_of("lost", int),
                                  number_of("gained", int), number_of("notice_s", float) if notice_text else None))
    return sorted(events)


def load_csv(path: Path, market: Market) -> list[MarketEvent]:
    return read_csv(path.read_text(), market, str(path))


def write_csv(events: Iterable[MarketEvent]) -> str:
    out = io.StringIO()
    out.write(",".join(TRACE_COLUMNS) + "\n")
    for e in events:
        notice = "" if e.notice_s is None else _number(e.notice_s)
        out.write(f"{_number(e.time_s)},{e.pool},{e.zone},{e.lost},{e.gained},{notice}\n")
    return out.getvalue()


def _number(value: float) -> str:
    """The shortest text that reads back as the same float (600.0 -> "600")."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def with_rate(market: Market, rate: float) -> Market:
    return replace(market, preemptions_per_node_hour=rate)
