"""A new agent joins a running job: the workers take a coordinated checkpoint (torchrun stops them with
SIGTERM to admit the node), the job re-forms at world size 2 and loads the world-size-1 checkpoint resharded
(FSDP2 on CPU/gloo), and training continues without losing a step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spotrain_dev.testing import wait_for
from spotrain_trainer.checkpoint.storage import LocalStorage

if TYPE_CHECKING:
    from tests.integration.trainer.conftest import MakeJob

STEPS = 30
HOLD_AT = 6  # pod-a holds before step 6 (while the hold file exists) until torchrun stops it to admit pod-b
RTOL = 1e-4  # see test_trainer_sigterm.py: only float summation order differs between world sizes


@pytest.mark.timeout(420)
def test_new_agent_joins_fsdp_job_reshards_and_continues(tmp_path: Path, make_job: MakeJob) -> None:
    ckpt = tmp_path / "volume" / "tiny"
    hold = tmp_path / "hold"
    hold.touch()
    hold_file = ["--hold-file", str(hold)]
    job = make_job(
        "--steps",
        str(STEPS),
        "--parallel",
        "fsdp",
        "--hold-at-step",
        str(HOLD_AT),
        *hold_file,
        checkpoint_uri=str(ckpt),
        env={"TINY_STEP_SLEEP": "0.05"},
    )
    a = job.start_pod("pod-a")
    try:
        wait_for(f"pod-a alone, holding before step {HOLD_AT}", lambda: job.events("hold"), timeout=240)
        b = job.start_pod("pod-b")
        wait_for("a step at world size 2", lambda: [r for r in job.losses() if r["world_size"] == 2], timeout=240)
        assert a.proc is not None and b.proc is not None
        assert a.proc.wait(timeout=300) == 0
        assert b.proc.wait(timeout=300) == 0
    except BaseException:
        print(job.logs())
        raise

    losses = job.losses()
    assert sorted(r["step"] for r in losses) == list(range(STEPS)), "every step exactly once"
    joined_at = min(r["step"] for r in losses if r["world_size"] == 2)
    assert joined_at == HOLD_AT + 1, "the step in progress when the node joined completed, then the checkpoint"
    assert all(r["world_size"] == 1 for r in losses if r["step"] < joined_at)
    assert all(r["world_size"] == 2 for r in losses if r["step"] >= joined_at)

    storage = LocalStorage(ckpt)
    before = storage.read_commit(joined_at)
    assert before is not None, "the checkpoint taken to admit the new node"
    assert before.world_size == 1 and before.reason == "notice:sigterm"
    assert sorted(before.files) == [".metadata", "__0_0.distcp"]
    final = storage.read_commit(STEPS)
    assert final is not None and final.world_size == 2
    assert {"__0_0.distcp", "__1_0.distcp"} <= set(final.files), "the final checkpoint is sharded over 2 ranks"
    for pod in (a, b):
        status = pod.status()
        assert status is not None and status["completed"] is True
        assert status["restored_step"] == joined_at
        assert status["world_size"] == 2

    ref = make_job(name="reference", standalone=True)
    done = ref.run_single("reference", ["--steps", str(STEPS), "--parallel", "fsdp"], {"TINY_STEP_SLEEP": "0"})
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    reference = {r["step"]: float(r["loss"]) for r in ref.losses()}
    for r in losses:
        rel = abs(r["loss"] - reference[r["step"]]) / abs(reference[r["step"]])
        assert rel <= RTOL, f"step {r['step']}: loss {r['loss']} vs {reference[r['step']]} ({rel:.3g})"
