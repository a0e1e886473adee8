"""SIGKILL of a whole node, no notice: the survivor resumes from the newest regular checkpoint; the steps lost
are at most one checkpoint interval."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spotrain_dev.testing import wait_for
from spotrain_trainer.checkpoint.storage import LocalStorage
from spotrain_trainer.processes import pid_alive

if TYPE_CHECKING:
    from tests.integration.trainer.conftest import MakeJob

STEPS = 26
EVERY = 5  # regular checkpoints every 5 steps (SPOTRAIN_CHECKPOINT_EVERY_STEPS)
HOLD_AT = 13  # both ranks hold before step 13 until the test says go: the kill lands at a known step


@pytest.mark.timeout(420)
def test_sigkill_without_notice_resumes_from_last_regular_checkpoint(tmp_path: Path, make_job: MakeJob) -> None:
    ckpt = tmp_path / "shared-volume" / "tiny"
    hold = tmp_path / "hold"
    hold.touch()
    job = make_job(
        "--steps",
        str(STEPS),
        "--hold-at-step",
        str(HOLD_AT),
        "--hold-file",
        str(hold),
        checkpoint_uri=f"file://{ckpt}",
        env={"SPOTRAIN_CHECKPOINT_EVERY_STEPS": str(EVERY), "TINY_STEP_SLEEP": "0.1"},
    )
    storage = LocalStorage(ckpt)
    a = job.start_pod("pod-a")
    b = job.start_pod("pod-b")
    try:
        holds = wait_for(f"both ranks holding at step {HOLD_AT}", lambda: job.events("hold"), timeout=240)
        assert holds[0]["world_size"] == 2, "both pods were in the job when it reached the hold"
        # The regular (asynchronous) checkpoint due at step 10 commits in the background meanwhile. (It is
        # taken at step 10 unless the previous one was still in flight then; then at the next boundary.)
        wait_for(
            "the checkpoint due at 10 committed", lambda: max(storage.committed_steps(), default=0) >= 10, timeout=120
        )
        done_before_kill = max(r["step"] for r in job.losses()) + 1
        assert done_before_kill == HOLD_AT

        killed = job.kill_pod(b, signal.SIGKILL)  # the agent, its worker and its control server
        wait_for("pod-b's processes gone", lambda: not any(pid_alive(p) for p in killed), timeout=30)
        newest_at_kill = max(storage.committed_steps())
        records_before_kill = len(job.records())
        hold.unlink()

        assert a.proc is not None
        assert a.proc.wait(timeout=300) == 0
    except BaseException:
        print(job.logs())
        raise

    assert 10 <= newest_at_kill <= HOLD_AT
    resumed = [e for e in job.events("start") if e["world_size"] == 1]
    assert resumed, job.events()
    resumed_at = resumed[-1]["step"]
    assert resumed_at == newest_at_kill, "resumed from the newest committed checkpoint"
    lost = done_before_kill - resumed_at
    assert 0 <= lost <= EVERY, f"{lost} steps lost, more than one interval ({EVERY})"

    losses = job.losses()
    assert sorted({r["step"] for r in losses}) == list(range(STEPS)), "no step missing"
    after_kill = [r for r in job.records()[records_before_kill:] if "loss" in r]
    assert all(r["world_size"] == 1 for r in after_kill)
    redone = sorted(r["step"] for r in after_kill if r["step"] < done_before_kill)
    assert redone == list(range(resumed_at, done_before_kill)), "exactly the lost steps were run again"

    status = a.status()
    assert status is not None and status["completed"] is True
    assert status["restart_count"] >= 1, "the lost node cost the survivor one worker-group restart"
    assert status["restored_step"] == resumed_at
