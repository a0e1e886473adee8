"""A checkpoint cut short is never loaded: killed mid-upload (data files in S3, no commit marker), or committed
but damaged later (a truncated or corrupted file listed in its marker). The previous good one is loaded."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from spotrain_dev.testing import wait_for
from spotrain_dev.trainer_harness import FaultProxy, FaultRule, ProcessSet
from spotrain_trainer.checkpoint.commit import verify_local_files
from spotrain_trainer.checkpoint.storage import CheckpointStorage, LocalStorage, S3Storage
from spotrain_trainer.config import S3Settings
from spotrain_trainer.constants import COMMIT_FILE
from spotrain_trainer.processes import kill_tree

if TYPE_CHECKING:
    from tests.integration.trainer.conftest import MakeJob


def _verify_all(storage: CheckpointStorage, tmp: Path) -> list[int]:
    steps = storage.committed_steps()
    for step in steps:
        marker = storage.read_commit(step)
        assert marker is not None
        directory = storage.fetch(step, sorted(marker.files), tmp)
        assert verify_local_files(directory, marker.files) == [], f"step {step} does not verify"
    return steps


@pytest.mark.timeout(300)
def test_checkpoint_killed_mid_upload_is_never_loaded(
    procs: ProcessSet,
    tmp_path: Path,
    s3: Any,
    bucket: str,
    moto_endpoint: str,
    s3_env: dict[str, str],
    example: list[str],
    make_job: MakeJob,
) -> None:
    host, port = moto_endpoint.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port))
    # Let the first commit marker through; hold the second one and never let it reach the store: the trainer
    # is killed while it waits, after the checkpoint's data files were uploaded.
    proxy.add(FaultRule("hang", method="PUT", path=r"/COMMIT", times=1, after=1))
    uri = f"s3://{bucket}/tiny"
    job = make_job(
        standalone=True,
        checkpoint_uri=uri,
        env={**s3_env, "SPOTRAIN_S3_ENDPOINT_URL": proxy.url, "SPOTRAIN_CHECKPOINT_EVERY_STEPS": "3"},
    )
    storage = S3Storage(uri, S3Settings(), tmp_path / "staging", client=s3)
    try:
        pod_dir = tmp_path / "job" / "first"
        pod_dir.mkdir(parents=True)
        env = job.pod_env("first", pod_dir, 0)
        env.update({"SPOTRAIN_S3_ENDPOINT_URL": proxy.url, "TINY_STEP_SLEEP": "0.05"})
        first = procs.spawn("first", [sys.executable, *example, "--steps", "40"], env=env)
        wait_for("the second commit marker upload in flight", lambda: proxy.hanging >= 1, timeout=180)
        cut = int(re.findall(r"/step-(\d+)/COMMIT", proxy.stats.faulted[0][1])[0])
        assert {"__0_0.distcp", ".metadata"} <= set(storage.file_sizes(cut)), "its data files were uploaded"
        kill_tree(first.pid)
        first.wait(timeout=30)
    finally:
        proxy.close()

    assert storage.committed_steps() == [3]
    assert cut > 3 and COMMIT_FILE not in storage.file_sizes(cut) and storage.read_commit(cut) is None
    first_losses = {r["step"]: r["loss"] for r in job.losses()}

    done = job.run_single("second", ["--steps", "12"], {"SPOTRAIN_S3_ENDPOINT_URL": moto_endpoint})
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    assert job.events("start")[-1]["step"] == 3, "resumed from step 3, not from the uncommitted one"
    second = [r for r in job.losses() if r["step"] >= 3][-9:]
    assert [r["step"] for r in second] == list(range(3, 12))
    for r in second:
        if r["step"] in first_losses:
            assert r["loss"] == first_losses[r["step"]], "a bitwise-identical continuation from step 3"
    committed = _verify_all(storage, tmp_path / "verify")
    assert committed[0] == 12, "training went on; every checkpoint committed since verifies"


@pytest.mark.parametrize("backend", ["local", "s3"])
@pytest.mark.timeout(300)
def test_damaged_committed_checkpoints_fall_back_to_previous(
    backend: str,
    tmp_path: Path,
    s3: Any,
    bucket: str,
    s3_env: dict[str, str],
    make_job: MakeJob,
) -> None:
    if backend == "local":
        uri = str(tmp_path / "volume" / "tiny")
        storage: CheckpointStorage = LocalStorage(uri)
        env: dict[str, str] = {}
    else:
        uri = f"s3://{bucket}/tiny"
        storage = S3Storage(uri, S3Settings(), tmp_path / "staging", client=s3)
        env = dict(s3_env)
    # Synchronous checkpoints every 3 steps: exactly steps 3, 6 and 9 get one.
    env.update({"SPOTRAIN_CHECKPOINT_EVERY_STEPS": "3", "SPOTRAIN_KEEP_LAST": "5", "SPOTRAIN_CHECKPOINT_ASYNC": "0"})
    job = make_job(standalone=True, checkpoint_uri=uri, env=env)
    done = job.run_single("first", ["--steps", "9"])
    assert done.returncode == 0, done.stdout.decode()[-3000:]
    assert storage.committed_steps() == [9, 6, 3]

    # Damage: step 9's shard truncated; step 6's shard corrupted (same size); a newer step 12 without marker.
    m9, m6 = storage.read_commit(9), storage.read_commit(6)
    assert m9 is not None and m6 is not None
    work = tmp_path / "damage"
    d9 = storage.fetch(9, sorted(m9.files), work / "9")
    d6 = storage.fetch(6, sorted(m6.files), work / "6")
    data9 = (d9 / "__0_0.distcp").read_bytes()
    data6 = bytearray((d6 / "__0_0.distcp").read_bytes())
    data6[len(data6) // 2] ^= 0xFF
    if isinstance(storage, LocalStorage):
        (d9 / "__0_0.distcp").write_bytes(data9[: len(data9) // 2])
        (d6 / "__0_0.distcp").write_bytes(bytes(data6))
        shutil.copytree(d9, storage.root / "step-000000012", ignore=shutil.ignore_patterns(COMMIT_FILE))
    else:
        assert isinstance(storage, S3Storage)
        s3.put_object(Bucket=bucket, Key="tiny/step-000000009/__0_0.distcp", Body=data9[: len(data9) // 2])
        s3.put_object(Bucket=bucket, Key="tiny/step-000000006/__0_0.distcp", Body=bytes(data6))
        for name in m9.files:
            s3.put_object(Bucket=bucket, Key=f"tiny/step-000000012/{name}", Body=(d9 / name).read_bytes())

    done = job.run_single("second", ["--steps", "12"])
    log = done.stdout.decode()
    assert done.returncode == 0, log[-3000:]
    assert job.events("start")[-1]["step"] == 3, "steps 9 and 6 are damaged, 12 is not committed"
    assert "step-000000009 is not usable" in log and "size" in log
    assert "step-000000006 is not usable" in log and "sha256 mismatch" in log
    assert _verify_all(storage, tmp_path / "verify")[:1] == [12], "training went on and committed step 12 cleanly"
