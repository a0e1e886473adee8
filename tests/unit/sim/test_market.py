"""Market traces: seeded generation, coupling across rates, and the CSV format (an outside input)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotrain_operator.simulate import market as markets
from spotrain_operator.simulate.market import MarketEvent, TraceError

AWS = markets.scenario("aws_8n_0.06ph")


def test_same_seed_same_trace_and_another_seed_another() -> None:
    one = markets.generate(AWS, 48 * 3600, seed=7)
    assert one == markets.generate(AWS, 48 * 3600, seed=7)
    assert one != markets.generate(AWS, 48 * 3600, seed=8)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), low=st.floats(0.0, 1.0), extra=st.floats(0.0, 1.0))
def test_a_higher_rate_adds_events_to_the_same_seed(seed: int, low: float, extra: float) -> None:
    calm = markets.generate(markets.with_rate(AWS, low), 24 * 3600, seed)
    volatile = markets.generate(markets.with_rate(AWS, low + extra), 24 * 3600, seed)
    losses = [(e.time_s, e.pool, e.zone, e.lost, e.notice_s) for e in volatile if e.lost]
    assert all((e.time_s, e.pool, e.zone, e.lost, e.notice_s) in losses for e in calm if e.lost)


def test_the_generated_rate_is_the_market_rate() -> None:
    market = markets.with_rate(AWS, 0.5)
    hours = 2000.0
    lost = sum(e.lost for e in markets.generate(market, hours * 3600, seed=3) if e.lost)
    # Per job node-hour: the job's nodes spread evenly over the market's pools and zones.
    assert lost / (market.job_nodes * hours) == pytest.approx(0.5, rel=0.1)


def test_every_loss_comes_back() -> None:
    trace = markets.generate(markets.scenario("aws_32n_0.6ph"), 24 * 3600, seed=1)
    assert sum(e.lost for e in trace) == sum(e.gained for e in trace)


events = st.builds(
    MarketEvent,
    time_s=st.floats(0, 1e6).map(lambda t: round(t, 3)),
    pool=st.sampled_from([p.name for p in AWS.spot_pools] + ["*"]),
    zone=st.sampled_from([*AWS.zones, "*"]),
    lost=st.integers(0, 50),
    gained=st.integers(0, 50),
    notice_s=st.one_of(st.none(), st.sampled_from([0.0, 30.0, 120.0])),
)


@given(st.lists(events, max_size=20))
def test_csv_round_trip(trace: list[MarketEvent]) -> None:
    parsed = markets.read_csv(markets.write_csv(sorted(trace)), AWS)
    assert [(e.time_s, e.pool, e.zone, e.lost, e.gained, e.notice_s) for e in parsed] == \
        [(e.time_s, e.pool, e.zone, e.lost, e.gained, e.notice_s) for e in sorted(trace)]


def test_csv_with_comments_and_defaults() -> None:
    text = ("# a trace\ntime_s,pool,zone,lost,gained,notice_s\n600,spot-m5,us-east-1a,2,0,120  # two nodes\n"
            "660,*,us-east-1b,1,,0\n2400,spot-m5,us-east-1a,0,2,\n")
    trace = markets.read_csv(text, AWS)
    assert [(e.lost, e.gained, e.notice_s) for e in trace] == [(2, 0, 120.0), (1, 0, 0.0), (0, 2, None)]


@pytest.mark.parametrize(("text", "message"), [
    ("time,pool,zone,lost,gained\n", "missing time_s"),
    ("time_s,pool,zone,lost,gained,notice_s\n1,spot-x,us-east-1a,1,0,\n", "line 2: pool 'spot-x'"),
    ("time_s,pool,zone,lost,gained,notice_s\n1,spot-m5,eu-west-1a,1,0,\n", "line 2: zone 'eu-west-1a'"),
    ("time_s,pool,zone,lost,gained,notice_s\nsoon,spot-m5,us-east-1a,1,0,\n", "line 2: time_s 'soon'"),
    ("time_s,pool,zone,lost,gained,notice_s\n1,spot-m5,us-east-1a,-1,0,\n", "lost must not be negative"),
])
def test_csv_errors_name_the_line_and_the_column(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        markets.read_csv(text, AWS)


@given(st.text(max_size=200))
def test_csv_parser_never_fails_otherwise(text: str) -> None:
    with contextlib.suppress(TraceError):
        markets.read_csv(text, AWS)
