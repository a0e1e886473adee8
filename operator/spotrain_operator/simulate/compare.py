"""Policies side by side on one trace, the metrics the issue asks for, and the what-if sweep.

Metrics (per policy and market):

* ``goodput``: committed useful node-seconds / paid node-seconds: the share of the compute paid for that became
  progress never rolled back.
* ``throughput_vs_on_demand``: committed work per hour relative to the full-size on-demand job.
* ``cost_ratio``: cost per 1,000 committed steps relative to the on-demand job (same run, same work).
* ``lost_steps_per_interruption_p50`` / ``_p95``: steps rolled back per interruption that hit the job.
* ``completion_h``: hours until the work was done (``completed`` false when the time limit came first).
* ``paid_share``: where the paid node-seconds went (training, checkpoint stalls, restarting, pods starting,
  waiting to join, rolled back).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from spotrain_operator.simulate import market as markets
from spotrain_operator.simulate.costs import Costs
from spotrain_operator.simulate.engine import RunResult, percentile, simulate
from spotrain_operator.simulate.market import Market, MarketEvent
from spotrain_operator.simulate.policies import FIXED_INTERVAL_S, Policy, job_spec, policy
from spotrain_trainer.interval import IntervalPolicy

DEFAULT_WORK_HOURS = 8.0
DEFAULT_SWEEP = (0.25, 0.5, 1.0, 2.0)


@dataclass
class Comparison:
    market: Market
    seed: int
    work_hours: float
    costs: Costs
    trace: list[MarketEvent]
    results: dict[str, RunResult]

    def summary(self, name: str) -> dict[str, Any]:
        return summarize(self.results[name], self.results.get("on_demand"))

    def to_json(self) -> dict[str, Any]:
        losses = [e for e in self.trace if e.lost]
        return {
            "market": self.market.to_json(),
            "seed": self.seed,
            "work_hours": self.work_hours,
            "costs": self.costs.to_json(),
            "trace": {"loss_events": len(losses), "nodes_lost": sum(e.lost for e in losses)},
            "policies": {name: self.summary(name) for name in self.results},
        }


def summarize(r: RunResult, reference: RunResult | None) -> dict[str, Any]:
    lost = [i.lost_node_s / r.step_node_s for i in r.interruptions]
    resumed = [i.resumed_s for i in r.interruptions if i.resumed_s is not None]
    out: dict[str, Any] = {
        "completed": r.completed,
        "completion_h": round(r.elapsed_s / 3600.0, 3),
        "goodput": round(r.goodput, 4),
        "cost": round(r.cost, 2),
        "paid_node_h": round(r.paid_node_s / 3600.0, 2),
        "committed_steps": round(r.committed_steps),
        "interruptions": len(r.interruptions),
        "preemptions": int(r.status.get("preemptions", 0)),
        "lost_steps_total": round(r.rolled_back_node_s / r.step_node_s),
        "lost_steps_per_interruption_p50": round(percentile(lost, 0.5), 1) if lost else 0.0,
        "lost_steps_per_interruption_p95": round(percentile(lost, 0.95), 1) if lost else 0.0,
        "resume_after_interruption_p50_s": round(percentile(resumed, 0.5), 1) if resumed else None,
        "operator_lost_steps": int(r.status.get("lostSteps", 0)),
        "paid_share": {k: round(v / r.paid_node_s, 4) for k, v in sorted(r.breakdown.items())} if r.paid_node_s
        else {},
        "paid_node_h_by_pool": {k: round(v / 3600.0, 2) for k, v in sorted(r.paid_by_pool.items())},
        "restarts": dict(sorted(r.restarts.items())),
        "events": dict(sorted(r.events.items())),
        "reconciles": r.reconciles,
    }
    if reference is not None and reference.committed_node_s and reference.cost and r.committed_node_s:
        out["cost_ratio"] = round((r.cost / r.committed_node_s) / (reference.cost / reference.committed_node_s), 4)
        mine = r.committed_node_s / r.elapsed_s
        theirs = reference.committed_node_s / reference.elapsed_s
        out["throughput_vs_on_demand"] = round(mine / theirs, 4)
    elif reference is not None:
        out["cost_ratio"] = None
        out["throughput_vs_on_demand"] = 0.0
    return out


def trace_for(market: Market, seed: int, work_hours: float) -> list[MarketEvent]:
    """A generated trace long enough for the simulation's time limit."""
    return markets.generate(market, _limit_hours(work_hours) * 3600.0, seed)


def _limit_hours(work_hours: float) -> float:
    """When a run that has not finished is stopped (a policy that cannot finish in a volatile market)."""
    return max(24.0, 4.0 * work_hours)


def _policy(name: str, spotrain_spec: Sequence[tuple[str, Any]]) -> Policy:
    p = policy(name)
    return dataclasses.replace(p, spec_overrides=tuple(spotrain_spec)) if name == "spotrain" and spotrain_spec else p


def compare(market: Market, names: Sequence[str], *, seed: int = 1, work_hours: float = DEFAULT_WORK_HOURS,
            costs: Costs | None = None, trace: list[MarketEvent] | None = None,
            spotrain_spec: Sequence[tuple[str, Any]] = (),
            progress: Callable[[str], None] | None = None) -> Comparison:
    """Every policy in ``names`` (and on_demand, the reference) on one trace; ``spotrain_spec`` changes the
    spotrain policy's spec (("fallback.returnToSpot", False), ...)."""
    costs = costs or Costs()
    trace = trace_for(market, seed, work_hours) if trace is None else trace
    wanted = list(names)
    if "on_demand" not in wanted:
        wanted.insert(0, "on_demand")  # the reference every ratio is taken against
    results = {}
    for name in wanted:
        if progress:
            progress(f"{market.name}: {name}")
        results[name] = simulate(market, _policy(name, spotrain_spec), trace, costs, work_hours=work_hours,
                                 max_hours=_limit_hours(work_hours))
    return Comparison(market, seed, work_hours, costs, trace, results)


def sweep(market: Market, factors: Sequence[float], *, seed: int = 1, work_hours: float = DEFAULT_WORK_HOURS,
          costs: Costs | None = None, trace: list[MarketEvent] | None = None,
          names: Sequence[str] = ("spotrain",), spotrain_spec: Sequence[tuple[str, Any]] = (),
          progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Goodput and cost ratio as the per-event overhead (stop, rendezvous, restart, restore, first step, failure
    detection) is scaled: how much a faster rescale would buy."""
    costs = costs or Costs()
    trace = trace_for(market, seed, work_hours) if trace is None else trace
    reference = simulate(market, policy("on_demand"), trace, costs, work_hours=work_hours,
                         max_hours=_limit_hours(work_hours))
    rows = []
    for factor in factors:
        scaled = costs.with_overhead_factor(factor)
        row: dict[str, Any] = {"factor": factor, "rescale_s": round(scaled.rescale_s, 2)}
        for name in names:
            if progress:
                progress(f"{market.name}: {name} with per-event overhead x{factor:g}")
            s = summarize(simulate(market, _policy(name, spotrain_spec), trace, scaled, work_hours=work_hours,
                                   max_hours=_limit_hours(work_hours)), reference)
            row[name] = {"goodput": s["goodput"], "cost_ratio": s.get("cost_ratio")}
        rows.append(row)
    return rows


def no_fault_goodput(p: Policy, market: Market, costs: Costs, *, work_hours: float,
                     nodes: int | None = None) -> float:
    """The goodput of policy ``p`` when nothing is ever preempted, in closed form: every worker is paid from
    its creation (the first reconcile) through node start, the first rendezvous, restart, restore and first
    step, the training itself, its regular checkpoints' stalls and the final checkpoint."""
    c = costs.scaled()
    n = nodes or market.job_nodes
    spec = job_spec(p, market, n)
    work_s = work_hours * 3600.0  # wall seconds of training at full size
    resume = c.pod_start_s + c.rendezvous_s + c.restart_s + c.restore_s + c.first_step_s
    interval = IntervalPolicy("auto", None, spec.checkpoint.min_interval_seconds,
                              spec.checkpoint.max_interval_seconds) if p.acts_on_notice else None
    stall = c.checkpoint_stall_s if interval else c.checkpoint_sync_s
    t, done, last = resume, 0.0, resume
    while True:
        due = last + (interval.interval_seconds() if interval else FIXED_INTERVAL_S)
        if done + (due - t) >= work_s:
            t += work_s - done
            break
        done += due - t
        t = due + stall
        last = due
        if interval:
            interval.observe(c.checkpoint_stall_s, c.checkpoint_durable_s)
    end = t + c.checkpoint_sync_s
    return work_s / end

