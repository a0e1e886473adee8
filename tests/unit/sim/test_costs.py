"""The simulator's cost parameters: scaling for a bigger model's state and the what-if factor."""

from __future__ import annotations

import pytest

from spotrain_operator.simulate import market as markets
from spotrain_operator.simulate.compare import compare
from spotrain_operator.simulate.costs import Costs


def test_state_moves_on_every_checkpoint_and_restore() -> None:
    base = Costs()
    big = Costs(state_gb=40.0, bandwidth_gb_s=2.0).scaled()
    assert big.notice_checkpoint_s == pytest.approx(base.notice_checkpoint_s + 20.0)
    assert big.restore_s == pytest.approx(base.restore_s + 20.0)
    assert big.checkpoint_sync_s == pytest.approx(base.checkpoint_sync_s + 20.0)
    assert big.checkpoint_stall_s == pytest.approx(base.checkpoint_stall_s + 4.0)  # the snapshot at 10 GB/s
    assert big.scaled() == big and base.scaled() == base


def test_the_overhead_factor_scales_every_restart_phase() -> None:
    half = Costs().with_overhead_factor(0.5)
    assert half.rescale_s == pytest.approx(Costs().rescale_s / 2)
    assert half.pod_start_s == Costs().pod_start_s  # a node's launch is not a rescale phase


def test_a_bigger_model_costs_spotrain_goodput() -> None:
    market = markets.scenario("aws_8n_0.06ph")
    trace = markets.generate(markets.with_rate(market, 0.6), 12 * 3600, seed=3)
    small = compare(market, ["spotrain"], work_hours=1.0, trace=trace).summary("spotrain")
    big = compare(market, ["spotrain"], work_hours=1.0, trace=trace,
                  costs=Costs(state_gb=20.0, bandwidth_gb_s=1.0)).summary("spotrain")
    assert big["goodput"] < small["goodput"]
