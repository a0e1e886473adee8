"""The public ``spotrain_trainer.testing.LocalPod``, used as docs/trainer.md tells users to: a checkpoint request
is made durable, SIGTERM ends the pod, and a second pod on the same workdir resumes from the last checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotrain_dev.trainer_harness import read_jsonl
from spotrain_trainer.testing import LocalPod


@pytest.mark.timeout(300)
def test_local_pod_checkpoints_on_notice_and_resumes(tmp_path: Path, example: list[str]) -> None:
    losses = tmp_path / "loss.jsonl"
    env = {"TINY_STEP_SLEEP": "0.05", "TINY_LOSS_LOG": str(losses)}
    with LocalPod([*example, "--steps", "400"], workdir=tmp_path, env=env) as pod:
        pod.wait_for_step(3)
        requested = pod.request_checkpoint("before-preemption")
        assert requested["step"] >= 3 and requested["reason"] == "notice:test"
        pod.terminate()
        pod.wait()
        resume_at = (pod.status() or {})["last_checkpoint"]["step"]
        assert resume_at >= requested["step"]
    first_run = len(read_jsonl(losses))
    with LocalPod([*example, "--steps", str(resume_at + 3)], workdir=tmp_path, env=env) as pod:
        assert pod.wait() == 0, pod.output()[-4000:]
    resumed = [r["step"] for r in read_jsonl(losses)[first_run:] if "loss" in r]
    assert resumed == [resume_at, resume_at + 1, resume_at + 2]
