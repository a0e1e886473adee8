"""The epochs example (DataLoader, ElasticDistributedSampler, session.iterate) interrupted mid-epoch: SIGTERM to one
of two agents; the survivor resumes alone, with a different per-rank batch, in the middle of the epoch. Every
sample of every epoch is trained on exactly once, and every step exactly once."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spotrain_dev.testing import wait_for
from spotrain_dev.trainer_harness import read_jsonl

if TYPE_CHECKING:
    from tests.integration.trainer.conftest import MakeJob

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "train_epochs.py"
EPOCHS, DATASET = 3, 60


@pytest.mark.timeout(420)
def test_interrupted_epochs_use_every_sample_once_and_lose_no_step(tmp_path: Path, make_job: MakeJob) -> None:
    log = tmp_path / "epochs.jsonl"
    job = make_job(
        script=[str(EXAMPLE), "--epochs", str(EPOCHS), "--dataset-size", str(DATASET), "--global-batch", "8"],
        env={"EPOCHS_LOG": str(log), "EPOCHS_STEP_SLEEP": "0.1"},
        job_name="epochs",
    )
    a = job.start_pod("pod-a")
    b = job.start_pod("pod-b")
    try:
        # Interrupt in the middle of epoch 1, at world size 2.
        wait_for(
            "epoch 1 at world 2",
            lambda: any(r["epoch"] == 1 and r["world_size"] == 2 for r in read_jsonl(log)),
            timeout=240,
        )
        job.kill_pod(b, signal.SIGTERM)
        assert a.proc is not None and b.proc is not None
        b.proc.wait(timeout=120)
        assert a.proc.wait(timeout=300) == 0
    except BaseException:
        print(job.logs())
        raise

    records = read_jsonl(log)
    steps = [r["step"] for r in records]
    assert steps == list(range(len(records))), "every step exactly once, in order"
    assert {r["world_size"] for r in records} == {1, 2}, "the job ran at both world sizes"
    last_at_two = max(r["step"] for r in records if r["world_size"] == 2)
    assert all(r["world_size"] == 1 for r in records[last_at_two + 1 :]), "the survivor finished alone"
    for epoch in range(EPOCHS):
        used = Counter(i for r in records if r["epoch"] == epoch for i in r["indices"])
        assert sorted(used) == list(range(DATASET)) and set(used.values()) == {1}, f"epoch {epoch}"
    status = a.status()
    assert status is not None and status["completed"] is True
