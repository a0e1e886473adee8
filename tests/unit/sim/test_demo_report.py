"""The demo's accounting of committed work from the trainer's loss log (pure)."""

from __future__ import annotations

import pytest

from spotrain_dev.demo import committed_work


def step(n: int, t: float, world: int) -> dict[str, object]:
    return {"step": n, "loss": 0.1, "world_size": world, "time": t}


def test_steps_rolled_back_by_a_restart_do_not_count() -> None:
    log = [{"event": "start", "step": 0, "world_size": 3}, step(0, 0.0, 3), step(1, 1.0, 3), step(2, 2.0, 3),
           step(3, 3.0, 3),
           # restarted from the checkpoint at step 2: steps 2 and 3 of the first generation are lost
           {"event": "start", "step": 2, "world_size": 2}, step(2, 10.0, 2), step(3, 12.0, 2)]
    useful, last = committed_work(log)
    # kept: step 1 (1 s x 3 nodes) and step 3 of the second generation (2 s x 2 nodes); the first step of a
    # generation has no measured duration.
    assert useful == pytest.approx(3.0 + 4.0)
    assert last == 4


def test_an_empty_log_has_no_work() -> None:
    assert committed_work([]) == (0.0, 0)
