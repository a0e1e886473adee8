"""Properties of the simulation, which drives the operator's own ``decide``."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotrain_operator.simulate import market as markets
from spotrain_operator.simulate.compare import compare, no_fault_goodput
from spotrain_operator.simulate.costs import Costs
from spotrain_operator.simulate.engine import simulate
from spotrain_operator.simulate.market import MarketEvent
from spotrain_operator.simulate.policies import POLICIES, SPOT_POLICIES, policy

MARKET = markets.scenario("aws_8n_0.06ph")
POOLS = [p.name for p in MARKET.spot_pools]
WORK_HOURS = 0.5
LIMIT_HOURS = 6.0
slow = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(policy_name: str, trace: list[MarketEvent], costs: Costs | None = None, work_hours: float = WORK_HOURS):
    return simulate(MARKET, policy(policy_name), trace, costs or Costs(), work_hours=work_hours,
                    max_hours=LIMIT_HOURS)


def losses(max_size: int, notices: list[float]) -> st.SearchStrategy[list[MarketEvent]]:
    """Losses during the job, each node's capacity back 10 minutes later."""
    loss = st.builds(lambda t, pool, zone, n, notice: [
        MarketEvent(t, pool, zone, lost=n, notice_s=notice),
        MarketEvent(t + notice + 600.0, pool, zone, gained=n)],
        st.integers(0, 2400).map(float), st.sampled_from(POOLS), st.sampled_from(MARKET.zones),
        st.integers(1, 3), st.sampled_from(notices))
    return st.lists(loss, max_size=max_size).map(lambda pairs: sorted(e for pair in pairs for e in pair))


@pytest.mark.parametrize("name", list(POLICIES))
@settings(max_examples=8, deadline=None)
@given(work_hours=st.floats(0.02, 1.5), pod_start=st.floats(1.0, 120.0), stall=st.floats(0.0, 2.0))
def test_without_preemptions_goodput_is_the_no_fault_value(name: str, work_hours: float, pod_start: float,
                                                          stall: float) -> None:
    costs = Costs(pod_start_s=pod_start, checkpoint_stall_s=stall, checkpoint_sync_s=stall * 5)
    result = run(name, [], costs, work_hours)
    assert result.completed
    assert result.goodput == pytest.approx(no_fault_goodput(policy(name), MARKET, costs, work_hours=work_hours),
                                           abs=1e-9)
    assert result.rolled_back_node_s == 0


def after(base: list[MarketEvent], extra: list[MarketEvent]) -> list[MarketEvent]:
    """``extra`` moved after every loss of ``base`` (and its notice)."""
    start = max((e.time_s + (e.notice_s or 0.0) for e in base if e.lost), default=0.0) + 1.0
    return sorted([*base, *(dataclasses.replace(e, time_s=e.time_s + start) for e in extra)])


@pytest.mark.parametrize("name", SPOT_POLICIES)
@slow
@given(base=losses(4, [0.0, 30.0, 120.0]), extra=losses(3, [0.0, 30.0, 120.0]))
def test_more_preemptions_never_raise_goodput(name: str, base: list[MarketEvent], extra: list[MarketEvent]) -> None:
    """Two effects hypothesis found make the literal claim false in a cluster with finite capacity:
    (1) an extra loss can take the node a later event of the trace would have hit (the later event then finds
    only idle capacity), so a superset of market events is not a superset of the job's losses: the extra
    losses here come after the others; (2) a node lost while it would only have waited (starting, or idle
    until the rest of the world is back) stops being paid for, so an extra loss can save that idle pay: the
    bound allows at most the node-seconds the run with fewer preemptions spent starting or waiting."""
    fewer = run(name, base)
    more = run(name, after(base, extra))
    idle = fewer.breakdown.get("pod_start", 0.0) + fewer.breakdown.get("waiting", 0.0)
    assert more.goodput <= fewer.committed_node_s / (fewer.paid_node_s - idle) + 1e-9


@slow
@given(base=losses(4, [120.0]), extra=losses(3, [120.0]))
def test_more_noticed_preemptions_never_raise_spotrain_goodput(base: list[MarketEvent],
                                                               extra: list[MarketEvent]) -> None:
    fewer = run("spotrain", base)
    more = run("spotrain", after(base, extra))
    idle = fewer.breakdown.get("pod_start", 0.0) + fewer.breakdown.get("waiting", 0.0)
    assert more.goodput <= fewer.committed_node_s / (fewer.paid_node_s - idle) + 1e-9


def _no_join_in_a_notice_window(trace: list[MarketEvent]) -> bool:
    """Capacity that comes back while a notice runs makes the workers restart for the join; a restart before the
    deadline of a request they answered takes no second save when one would not fit (session.py,
    second_save_fits), so it rolls back to the requested checkpoint: a known trade-off, outside this property."""
    windows = [(e.time_s, e.time_s + (e.notice_s or 0.0)) for e in trace if e.lost]
    return not any(start <= e.time_s <= end for e in trace if e.gained for start, end in windows)


@slow
@given(trace=losses(6, [120.0]).filter(_no_join_in_a_notice_window), notice_checkpoint=st.floats(0.1, 60.0))
def test_spotrain_never_loses_a_committed_step_with_enough_notice(trace: list[MarketEvent],
                                                                   notice_checkpoint: float) -> None:
    """Enough notice: the operator's reaction, a regular checkpoint still being written, the notice checkpoint
    and the operator's poll all fit before the deadline minus the safety margin. Then every doomed worker is
    evicted only once the checkpoint is durable (the operator counts no lost step), and what is rolled back is at
    most the steps taken after that checkpoint until the eviction (when a second save would not fit)."""
    costs = Costs(notice_checkpoint_s=notice_checkpoint)
    result = run("spotrain", trace, costs)
    assert result.completed
    assert result.status.get("lostSteps", 0) == 0
    after_checkpoint = result.nodes * (costs.operator_poll_s + costs.operator_reaction_s)
    assert all(i.lost_node_s <= after_checkpoint + 1e-6 for i in result.interruptions)


def test_without_notice_spotrain_rolls_back_what_was_not_committed() -> None:
    trace = [MarketEvent(900.0, POOLS[0], MARKET.zones[0], lost=1, notice_s=0.0)]
    result = run("spotrain", trace)
    assert result.completed and result.interruptions
    assert result.rolled_back_node_s > 0


def test_a_notice_shorter_than_the_checkpoint_loses_work() -> None:
    trace = [MarketEvent(900.0, POOLS[0], MARKET.zones[0], lost=1, notice_s=30.0)]
    result = run("spotrain", trace, Costs(notice_checkpoint_s=45.0))
    assert result.rolled_back_node_s > 0


def test_the_simulation_is_deterministic() -> None:
    trace = markets.generate(markets.with_rate(MARKET, 0.6), 6 * 3600, seed=5)
    one, two = run("spotrain", trace), run("spotrain", trace)
    assert (one.goodput, one.cost, one.world) == (two.goodput, two.cost, two.world)


def test_paid_time_is_fully_accounted_for() -> None:
    trace = markets.generate(markets.with_rate(MARKET, 0.6), 6 * 3600, seed=2)
    for name in POLICIES:
        result = run(name, trace)
        assert sum(result.breakdown.values()) == pytest.approx(result.paid_node_s, rel=1e-9)


def test_comparison_reports_ratios_against_on_demand() -> None:
    trace = markets.generate(markets.with_rate(MARKET, 0.3), 6 * 3600, seed=4)
    c = compare(MARKET, ["spotrain"], work_hours=WORK_HOURS, trace=trace)
    assert list(c.results) == ["on_demand", "spotrain"]
    on_demand, spotrain = c.summary("on_demand"), c.summary("spotrain")
    assert on_demand["cost_ratio"] == 1.0 and on_demand["throughput_vs_on_demand"] == 1.0
    assert 0 < spotrain["cost_ratio"] < 1  # spot at 35 % of the price, with some overhead
    document = c.to_json()
    assert document["policies"]["spotrain"]["goodput"] == spotrain["goodput"]
    assert document["costs"]["rescale_s"] == pytest.approx(dataclasses.replace(Costs()).rescale_s, abs=1e-3)


def test_a_notice_on_the_store_node_moves_the_store_and_keeps_the_workers() -> None:
    """The on-demand zone that holds the store is reclaimed with notice: the store moves (the workers re-join it in
    their pods, one restart of the group), and nothing is rolled back."""
    od = MARKET.on_demand_pool
    zone = sorted(MARKET.zones)[0]  # the store's zone: every zone has as many stable nodes, the first one wins
    lost = MARKET.on_demand_nodes_per_zone + 1
    result = run("spotrain", [MarketEvent(600.0, od, zone, lost=lost, notice_s=120.0),
                              MarketEvent(1800.0, od, zone, gained=lost)])
    assert result.completed
    assert result.events["RendezvousMoved"] == 1 and not result.events["RendezvousLost"]
    assert result.restarts["store_move"] == 1 and result.rolled_back_node_s == 0
    assert not result.events["WorkerPreempted"]
