"""ElasticDistributedSampler: a position saved at one world size resumes at another, and every sample of the epoch
is used exactly once (bar a last step with fewer samples than ranks, which cannot give every rank a share), with
every rank's DataLoader yielding the same number of batches."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotrain_trainer.data import ElasticDistributedSampler, rank_slice, step_sizes


def run_steps(samplers: list[ElasticDistributedSampler], steps: int | None) -> list[list[int]]:
    """What the ranks' DataLoaders would hand out, ``steps`` steps (None: to the end of the epoch), one list of
    global indices per step; advances every rank's sampler like Session.iterate does."""
    batch = samplers[0].batch_size
    per_rank = [list(s) for s in samplers]
    batches = [[idx[i : i + batch] for i in range(0, len(idx), batch)] for idx in per_rank]
    counts = {len(b) for b in batches}
    assert len(counts) == 1, f"ranks would run different numbers of steps: {counts}"
    n = counts.pop()
    assert n == samplers[0].steps_left
    taken = n if steps is None else min(steps, n)
    out = []
    for step in range(taken):
        shares = [b[step] for b in batches]
        assert all(1 <= len(share) <= batch for share in shares), shares
        out.append([i for share in shares for i in share])
    for s in samplers:
        s.advance(taken)
    return out


def world(
    n: int, world_size: int, batch: int, state: dict[str, Any] | None = None, *, shuffle: bool = True, seed: int = 0
) -> list[ElasticDistributedSampler]:
    samplers = [
        ElasticDistributedSampler(n, batch_size=batch, num_replicas=world_size, rank=r, shuffle=shuffle, seed=seed)
        for r in range(world_size)
    ]
    if state is not None:
        for s in samplers:
            s.load_state_dict(state)
    return samplers


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=300),
    w1=st.integers(min_value=1, max_value=8),
    b1=st.integers(min_value=1, max_value=9),
    w2=st.integers(min_value=1, max_value=8),
    b2=st.integers(min_value=1, max_value=9),
    resume_after=st.integers(min_value=0, max_value=60),
    shuffle=st.booleans(),
    epoch=st.integers(min_value=0, max_value=3),
)
def test_resume_at_another_world_size_uses_every_sample_once(
    n: int, w1: int, b1: int, w2: int, b2: int, resume_after: int, shuffle: bool, epoch: int
) -> None:
    first = world(n, w1, b1, shuffle=shuffle, seed=7)
    for s in first:
        s.set_epoch(epoch)
    finished_first = resume_after >= first[0].steps_left
    skipped, last_world = (first[0].skipped, w1) if finished_first else (0, w2)
    before = run_steps(first, resume_after)
    state = first[0].state_dict()
    assert all(s.state_dict() == state for s in first), "every rank holds the same position"

    second = world(n, w2, b2, state, shuffle=shuffle, seed=7)
    skipped += second[0].skipped
    after = run_steps(second, None)
    assert second[0].steps_left == 0 and second[0].consumed == n

    used = Counter(i for step in before + after for i in step)
    assert all(c == 1 for c in used.values()), "no sample twice"
    missing = set(range(n)) - set(used)
    assert len(missing) == skipped < last_world, "only a remainder smaller than the world size is skipped"
    order = first[0].order()
    assert [i for step in before + after for i in step] == order[: n - skipped], "the epoch's order is kept"


@given(
    remaining=st.integers(min_value=0, max_value=500),
    w=st.integers(min_value=1, max_value=16),
    b=st.integers(min_value=1, max_value=16),
)
def test_step_layout(remaining: int, w: int, b: int) -> None:
    sizes, skipped = step_sizes(remaining, w, b)
    assert sum(sizes) + skipped == remaining
    assert all(size == w * b for size in sizes[:-1]), "every step but the last is full"
    assert all(w <= size <= w * b for size in sizes), "each rank gets 1..batch samples every step"
    assert skipped < w
    for size in sizes:
        spans = [rank_slice(size, w, r) for r in range(w)]
        assert [off for off, _ in spans] == [sum(length for _, length in spans[:r]) for r in range(w)]
        assert sum(length for _, length in spans) == size


def test_shuffle_differs_by_epoch_and_matches_across_ranks() -> None:
    a, b = world(100, 2, 5, shuffle=True, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert a.order() == b.order() != world(100, 1, 5, shuffle=True, seed=3)[0].order()
    assert set(a) | set(b) == set(range(100)) and not set(a) & set(b)


def test_position_of_another_data_set_is_refused() -> None:
    (s,) = world(100, 1, 4)
    with pytest.raises(ValueError, match="dataset_len=90"):
        s.load_state_dict({**s.state_dict(), "dataset_len": 90})


def test_set_epoch_restarts_only_a_new_epoch() -> None:
    (s,) = world(20, 1, 4)
    s.advance(2)
    s.set_epoch(0)
    assert s.consumed == 8
    s.set_epoch(1)
    assert (s.epoch, s.consumed) == (1, 0)
    with pytest.raises(ValueError, match="past the end"):
        s.advance(6)
