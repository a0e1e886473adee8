"""POST /checkpoint to one pod's control server: every rank checkpoints at the same step and the status reports
the request id once the checkpoint is durable. With no SIGTERM anywhere (the operator's eviction comes next) the
ranks train on in the same rendezvous round; the SIGTERM that follows is covered by test_trainer_sigterm."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spotrain_dev.testing import wait_for
from spotrain_dev.trainer_harness import ProcessSet, http_json
from spotrain_trainer.checkpoint.commit import utc_now_rfc3339
from spotrain_trainer.checkpoint.storage import S3Storage
from spotrain_trainer.config import S3Settings
from spotrain_trainer.constants import EXIT_CHECKPOINTED_ON_NOTICE

if TYPE_CHECKING:
    from tests.integration.trainer.conftest import MakeJob

STEPS = 34


@pytest.mark.timeout(420)
def test_checkpoint_request_is_coordinated_reported_and_resumed(
    procs: ProcessSet,
    tmp_path: Path,
    s3: Any,
    bucket: str,
    s3_env: dict[str, str],
    make_job: MakeJob,
) -> None:
    uri = f"s3://{bucket}/tiny"
    job = make_job(
        "--steps", str(STEPS), checkpoint_uri=uri, env={**s3_env, "TINY_STEP_SLEEP": "0.1"}, min_nodes=2, max_nodes=2
    )
    a = job.start_pod("pod-a")
    b = job.start_pod("pod-b")
    request_id = f"notice-{uuid.uuid4().hex[:8]}"
    deadline = utc_now_rfc3339(time.time() + 120)
    try:
        wait_for("5 steps at world 2", lambda: len([r for r in job.losses() if r["world_size"] == 2]) >= 5, timeout=240)
        code, body = b.post_checkpoint(request_id, reason="spot-interruption", deadline=deadline)
        assert (code, body["accepted"], body["id"]) == (202, True, request_id)
        code, body = b.post_checkpoint(request_id, reason="spot-interruption", deadline=deadline)
        assert code == 202 and body["accepted"] is True, "the same id again is accepted and changes nothing"

        def handled() -> dict[str, Any] | None:
            s = b.http_status()
            return s if (s["last_checkpoint"] or {}).get("request_id") == request_id else None

        status = wait_for("the request reported as handled", handled, timeout=180)
        step = status["last_checkpoint"]["step"]
        assert status["handled_request_id"] == request_id
        assert status["checkpoint_request"] is None

        # Handled means durable: the commit marker is in S3, taken by both ranks at that step.
        storage = S3Storage(uri, S3Settings(), tmp_path / "staging", client=s3)
        marker = storage.read_commit(step)
        assert marker is not None and marker.world_size == 2
        assert marker.request_id == request_id and marker.reason == "notice:spot-interruption"
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(marker.files)
        status_a = wait_for("pod-a status", lambda: (s := a.status()) and s["last_checkpoint"] and s, timeout=60)
        assert status_a["last_checkpoint"]["step"] == step, "both pods report the same coordinated checkpoint"

        code, metrics = http_json("GET", b.url + "/metrics")
        assert code == 200 and isinstance(metrics, str)
        assert f'spotrain_trainer_last_checkpoint_step{{job="tiny",pod="pod-b"}} {float(step)}' in metrics

        code, body = b.post_checkpoint(request_id)
        assert code == 202 and body.get("handled") is True, "a handled request is not taken again"
        assert a.proc is not None and b.proc is not None
        assert a.proc.wait(timeout=300) == 0
        assert b.proc.wait(timeout=300) == 0
    except BaseException:
        print(job.logs())
        raise

    for pod in (a, b):
        assert f"exitcode: {EXIT_CHECKPOINTED_ON_NOTICE}" not in procs.log_text(pod.name), "no restart was needed"
        final = pod.status()
        assert final is not None and final["completed"] is True
        assert final["checkpoints_total"]["notice"] == 1
        assert '"completed"' in pod.termination_log.read_text()
    losses = job.losses()
    assert sorted(r["step"] for r in losses) == list(range(STEPS))
    assert all(r["world_size"] == 2 for r in losses)
    assert {r["restart"] for r in losses} == {0}, "the ranks trained on in the same round"
