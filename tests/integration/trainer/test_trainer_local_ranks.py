"""Two ranks in one pod (nprocPerNode 2): one checkpoint request gives one coordinated checkpoint, after which
training goes on in the same round. Every rank of the pod sees the request file, and every one must mark it
handled: a rank that kept seeing it pending would make every following step take another checkpoint."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spotrain_dev.testing import wait_for
from spotrain_trainer.checkpoint.storage import LocalStorage

if TYPE_CHECKING:
    from tests.integration.trainer.conftest import MakeJob

STEPS = 30


@pytest.mark.timeout(420)
def test_one_request_gives_one_checkpoint_with_two_ranks_per_pod(tmp_path: Path, make_job: MakeJob) -> None:
    ckpt = tmp_path / "ckpt"
    job = make_job(
        "--steps",
        str(STEPS),
        checkpoint_uri=str(ckpt),
        env={"TINY_STEP_SLEEP": "0.1"},
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=2,
    )
    pod = job.start_pod("pod-a")
    request_id = f"notice-{uuid.uuid4().hex[:8]}"
    try:
        wait_for("5 steps", lambda: len(job.losses()) >= 5, timeout=240)
        code, body = pod.post_checkpoint(request_id, reason="spot-interruption")
        assert code == 202 and body["accepted"] is True

        def handled() -> dict[str, Any] | None:
            s = pod.status()
            return s if s and (s["last_checkpoint"] or {}).get("request_id") == request_id else None

        step = wait_for("the request reported as handled", handled, timeout=180)["last_checkpoint"]["step"]
        assert pod.proc is not None and pod.proc.wait(timeout=300) == 0
    except BaseException:
        print(job.logs())
        raise

    status = pod.status()
    assert status is not None and status["completed"] is True
    assert status["checkpoints_total"]["notice"] == 1, status["checkpoints_total"]
    storage = LocalStorage(ckpt)
    reasons = {s: m.reason for s in storage.committed_steps() if (m := storage.read_commit(s)) is not None}
    assert [s for s, r in reasons.items() if r.startswith("notice")] == [step], reasons
    marker = storage.read_commit(step)
    assert marker is not None and marker.world_size == 2 and marker.request_id == request_id
    losses = job.losses()
    assert sorted(r["step"] for r in losses) == list(range(STEPS))
    assert {r["restart"] for r in losses} == {0}, "training went on in the same round"
