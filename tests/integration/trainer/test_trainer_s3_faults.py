"""S3 faults injected by a proxy between the trainer and moto: throttling (503 SlowDown), 500s, connection
resets before and after the request reached the store. Transient faults are retried and every checkpoint is
committed intact; a store that keeps failing makes the error surface (non-zero exit, status), never a
silently missing checkpoint."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spotrain_dev.testing import wait_for
from spotrain_dev.trainer_harness import FaultProxy, FaultRule, ProcessSet
from spotrain_trainer.checkpoint.commit import verify_local_files
from spotrain_trainer.checkpoint.storage import S3Storage
from spotrain_trainer.config import S3Settings
from spotrain_trainer.constants import EXIT_NOTICE_CHECKPOINT_FAILED
from spotrain_trainer.statefiles import read_json

if TYPE_CHECKING:
    from tests.integration.trainer.conftest import MakeJob

# Few botocore attempts per request, so that faults in a row also exercise our own retries around them.
FAST_RETRIES = {
    "SPOTRAIN_S3_MAX_ATTEMPTS": "2",
    "SPOTRAIN_S3_OP_RETRIES": "4",
    "SPOTRAIN_S3_BACKOFF_BASE": "0.05",
    "SPOTRAIN_S3_BACKOFF_MAX": "0.3",
}


def _proxy(moto_endpoint: str) -> FaultProxy:
    host, port = moto_endpoint.removeprefix("http://").split(":")
    return FaultProxy(host, int(port))


@pytest.mark.timeout(300)
def test_transient_s3_faults_are_retried_and_every_checkpoint_is_intact(
    tmp_path: Path,
    s3: Any,
    bucket: str,
    moto_endpoint: str,
    s3_env: dict[str, str],
    make_job: MakeJob,
) -> None:
    proxy = _proxy(moto_endpoint)
    proxy.add(FaultRule("slowdown", method="PUT", path=r"\.distcp", times=3))  # 3 in a row: beyond botocore
    proxy.add(FaultRule("500", method="PUT", path=r"\.metadata", times=2))
    proxy.add(FaultRule("reset", method="PUT", path=r"\.distcp", times=2, every=2))
    proxy.add(FaultRule("reset_after", method="PUT", path=r"/COMMIT", times=1))  # applied, answer lost
    proxy.add(FaultRule("503", method="GET", path=r"list-type=2", times=2))
    uri = f"s3://{bucket}/tiny"
    env = {**s3_env, **FAST_RETRIES, "SPOTRAIN_S3_ENDPOINT_URL": proxy.url, "SPOTRAIN_CHECKPOINT_EVERY_STEPS": "3"}
    env.update({"SPOTRAIN_KEEP_LAST": "10", "SPOTRAIN_CHECKPOINT_ASYNC": "0"})  # synchronous: one every 3 steps
    job = make_job(standalone=True, checkpoint_uri=uri, env=env)
    try:
        done = job.run_single("trainer", ["--steps", "12"])
    finally:
        proxy.close()
    log = done.stdout.decode()
    assert done.returncode == 0, log[-4000:]
    for kind in ("slowdown", "500", "reset", "reset_after", "503"):
        assert proxy.stats.injected.get(kind, 0) >= 1, f"no {kind} fault was injected: {proxy.stats.injected}"
    assert "retrying" in log, "our retry loop took over where botocore's attempts ran out"

    storage = S3Storage(uri, S3Settings(), tmp_path / "staging", client=s3)
    assert storage.committed_steps() == [12, 9, 6, 3]
    for step in storage.committed_steps():
        marker = storage.read_commit(step)
        assert marker is not None
        directory = storage.fetch(step, sorted(marker.files), tmp_path / "verify")
        assert verify_local_files(directory, marker.files) == []
    assert [r["step"] for r in job.losses()] == list(range(12))


@pytest.mark.timeout(300)
def test_s3_that_keeps_failing_surfaces_an_error(
    tmp_path: Path,
    s3: Any,
    bucket: str,
    moto_endpoint: str,
    s3_env: dict[str, str],
    make_job: MakeJob,
) -> None:
    proxy = _proxy(moto_endpoint)
    proxy.add(FaultRule("500", method="PUT", path=r"/step-", times=None))  # every upload, forever
    uri = f"s3://{bucket}/tiny"
    env = {**s3_env, **FAST_RETRIES, "SPOTRAIN_S3_ENDPOINT_URL": proxy.url, "SPOTRAIN_CHECKPOINT_EVERY_STEPS": "2"}
    job = make_job(standalone=True, checkpoint_uri=uri, env=env)
    try:
        done = job.run_single("trainer", ["--steps", "60"], {"TINY_STEP_SLEEP": "0.05"})
    finally:
        proxy.close()
    log = done.stdout.decode()
    assert done.returncode != 0, "the job must not look successful without its checkpoints"
    assert "checkpoint of step 2 failed" in log and "InternalError" in log
    status = read_json(tmp_path / "job" / "trainer" / "state" / "status.json")
    assert status is not None
    assert status["phase"] == "failed" and status["completed"] is False
    assert status["checkpoint_failures_total"] >= 1
    assert "InternalError" in (status["last_checkpoint_error"] or "")
    assert status["last_checkpoint"] is None
    storage = S3Storage(uri, S3Settings(), tmp_path / "staging", client=s3)
    assert storage.committed_steps() == [], "nothing claims to be committed"
    assert storage.read_completed() is None


@pytest.mark.timeout(300)
def test_checkpoint_on_notice_that_cannot_be_made_durable_exits_76(
    procs: ProcessSet,
    tmp_path: Path,
    s3: Any,
    bucket: str,
    moto_endpoint: str,
    s3_env: dict[str, str],
    example: list[str],
    make_job: MakeJob,
) -> None:
    proxy = _proxy(moto_endpoint)
    proxy.add(FaultRule("slowdown", method="PUT", path=r"/step-", times=None))
    uri = f"s3://{bucket}/tiny"
    job = make_job(standalone=True, checkpoint_uri=uri, env=s3_env)
    pod_dir = tmp_path / "job" / "trainer"
    pod_dir.mkdir(parents=True)
    env = job.pod_env("trainer", pod_dir, 0)
    env.update({**FAST_RETRIES, "SPOTRAIN_S3_OP_RETRIES": "2"})
    env.update({"SPOTRAIN_S3_ENDPOINT_URL": proxy.url, "TINY_STEP_SLEEP": "0.05"})
    try:
        proc = procs.spawn("trainer", [sys.executable, *example, "--steps", "2000"], env=env)
        wait_for("training under way", lambda: len(job.losses()) >= 3, timeout=180)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == EXIT_NOTICE_CHECKPOINT_FAILED, procs.log_text("trainer")[-3000:]
    finally:
        proxy.close()
    status = read_json(pod_dir / "state" / "status.json")
    assert status is not None and status["phase"] == "failed"
    assert "checkpoint on notice failed" in status["error"]
    assert status["last_checkpoint"] is None and status["handled_request_id"] is None
    storage = S3Storage(uri, S3Settings(), tmp_path / "staging", client=s3)
    assert storage.committed_steps() == []
