"""A reconcile that keeps failing backs off exponentially, capped, with jitter; less while a drain is in flight."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from spotrain_operator.controllers.jobs import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    DRAIN_BACKOFF_CAP_SECONDS,
    backoff_seconds,
)


def test_doubles_from_the_base_up_to_the_cap() -> None:
    delays = [backoff_seconds(n, False, 1.0) for n in range(1, 12)]
    assert delays[0] == BACKOFF_BASE_SECONDS and delays[1] == 2 * BACKOFF_BASE_SECONDS
    assert delays[-1] == BACKOFF_CAP_SECONDS
    assert all(a <= b for a, b in itertools.pairwise(delays))


@given(st.integers(1, 10**6), st.booleans(), st.floats(0.5, 1.0))
def test_bounded_and_never_longer_than_a_drain_allows(failures: int, draining: bool, jitter: float) -> None:
    delay = backoff_seconds(failures, draining, jitter)
    assert 0 < delay <= (DRAIN_BACKOFF_CAP_SECONDS if draining else BACKOFF_CAP_SECONDS)
