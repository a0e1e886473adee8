"""S3 storage against a moto server, directly and through a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from spotrain_dev.trainer_harness import FaultProxy, FaultRule
from spotrain_trainer.checkpoint.commit import CommitMarker, FileInfo, Listing, hash_file, verify_local_files
from spotrain_trainer.checkpoint.storage import (
    CommitConflictError,
    LocalStorage,
    S3Storage,
    StorageError,
    is_retryable,
    open_storage,
    retry_call,
)
from spotrain_trainer.config import S3Settings


def _storage(uri: str, settings: S3Settings, endpoint: str, staging: Path) -> S3Storage:
    return S3Storage(uri, S3Settings(**{**settings.__dict__, "endpoint_url": endpoint}), staging)


def _save(storage: S3Storage, step: int, files: dict[str, bytes]) -> CommitMarker:
    d = storage.write_dir(step, 0)
    for name, data in files.items():
        (d / name).write_bytes(data)
    infos = {n: hash_file(d / n) for n in files}
    storage.publish(step, d, sorted(files))
    storage.cleanup_write_dir(step, 0)
    assert not d.exists()
    marker = CommitMarker(step=step, world_size=1, files=infos)
    storage.write_commit(marker)
    return marker


def test_layout_listing_fetch_delete(
    bucket: str, moto_url: str, fast_s3: S3Settings, staging: Path, client: Any, tmp_path: Path
) -> None:
    storage = _storage(f"s3://{bucket}/jobs/a/", fast_s3, moto_url, staging)
    assert storage.uri == f"s3://{bucket}/jobs/a" and storage.list_checkpoints() == []
    m3 = _save(storage, 3, {"__0_0.distcp": b"a" * 100, ".metadata": b"m"})
    _save(storage, 7, {"__0_0.distcp": b"b" * 50, "__1_0.distcp": b"c" * 60, ".metadata": b"m"})
    client.put_object(Bucket=bucket, Key="jobs/a/step-000000009/__0_0.distcp", Body=b"partial")
    client.put_object(Bucket=bucket, Key="jobs/ab/step-000000001/COMMIT", Body=b"another job's prefix")
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="jobs/a/")["Contents"])
    assert "jobs/a/step-000000003/COMMIT" in keys and "jobs/a/step-000000003/__0_0.distcp" in keys

    assert storage.list_checkpoints() == [Listing(3, True), Listing(7, True), Listing(9, False)]
    assert storage.committed_steps() == [7, 3]
    assert storage.read_commit(3) == m3 and storage.read_commit(9) is None
    assert storage.file_sizes(7) == {"__0_0.distcp": 50, "__1_0.distcp": 60, ".metadata": 1}
    d = storage.fetch(3, sorted(m3.files), tmp_path / "cache")
    assert d == storage.fetch_dir(3, tmp_path / "cache")
    assert verify_local_files(d, m3.files) == []

    storage.delete(3)
    storage.clear_step(9)
    assert storage.list_checkpoints() == [Listing(7, True)]
    storage.write_completed(b"{}")
    assert storage.read_completed() == b"{}"
    assert client.get_object(Bucket=bucket, Key="jobs/a/COMPLETED")["Body"].read() == b"{}"


def test_bucket_root_prefix(bucket: str, moto_url: str, fast_s3: S3Settings, staging: Path) -> None:
    storage = _storage(f"s3://{bucket}", fast_s3, moto_url, staging)
    _save(storage, 1, {".metadata": b"m"})
    assert storage.committed_steps() == [1]


def test_commit_marker_is_conditional(bucket: str, moto_url: str, fast_s3: S3Settings, staging: Path) -> None:
    storage = _storage(f"s3://{bucket}/j", fast_s3, moto_url, staging)
    marker = _save(storage, 4, {".metadata": b"m"})
    storage.write_commit(marker)  # identical: accepted (a retry of our own commit)
    with pytest.raises(CommitConflictError):
        storage.write_commit(CommitMarker(step=4, world_size=9, files=marker.files))
    assert storage.read_commit(4) == marker


def test_commit_whose_answer_is_lost_is_recognised(
    bucket: str, proxy: FaultProxy, fast_s3: S3Settings, staging: Path
) -> None:
    storage = _storage(f"s3://{bucket}/j", fast_s3, proxy.url, staging)
    proxy.add(FaultRule("reset_after", method="PUT", path=r"/COMMIT$", times=1))
    marker = _save(storage, 2, {".metadata": b"m"})  # the PUT took effect; the retry gets 412 and compares
    assert proxy.stats.injected == {"reset_after": 1}
    assert storage.read_commit(2) == marker


def test_multipart_upload_and_download(
    bucket: str, proxy: FaultProxy, fast_s3: S3Settings, staging: Path, tmp_path: Path
) -> None:
    storage = _storage(f"s3://{bucket}/big", fast_s3, proxy.url, staging)
    data = os.urandom(12 * 1024 * 1024 + 123)  # > 5 MiB threshold: three parts
    proxy.add(FaultRule("slowdown", method="PUT", path=r"partNumber=2", times=1))
    marker = _save(storage, 1, {"__0_0.distcp": data})
    assert any(m == "POST" and "uploads" in p for m, p, _ in proxy.stats.log), "a multipart upload was used"
    assert len([1 for m, p, f in proxy.stats.log if m == "PUT" and "partNumber" in p and f == "forward"]) == 3
    assert marker.files["__0_0.distcp"] == FileInfo(len(data), hashlib.sha256(data).hexdigest())
    d = storage.fetch(1, ["__0_0.distcp"], tmp_path / "dl")
    assert (d / "__0_0.distcp").read_bytes() == data


def test_transient_faults_are_retried(bucket: str, proxy: FaultProxy, fast_s3: S3Settings, staging: Path) -> None:
    storage = _storage(f"s3://{bucket}/j", fast_s3, proxy.url, staging)
    # Three throttled answers in a row exceed botocore's 2 attempts: our own retry takes over.
    proxy.add(FaultRule("slowdown", method="PUT", path=r"__0_0", times=3))
    proxy.add(FaultRule("reset", method="PUT", path=r"\.metadata", times=1))
    proxy.add(FaultRule("500", method="GET", path=r"list-type=2", times=1))
    proxy.add(FaultRule("503", method="HEAD", times=1))
    marker = _save(storage, 5, {"__0_0.distcp": b"z" * 4096, ".metadata": b"m"})
    assert storage.committed_steps() == [5]
    assert proxy.stats.injected == {"slowdown": 3, "reset": 1, "500": 1, "503": 1}
    assert storage.read_commit(5) == marker


def test_permanent_failure_raises_after_every_attempt(
    bucket: str, proxy: FaultProxy, fast_s3: S3Settings, staging: Path
) -> None:
    storage = _storage(f"s3://{bucket}/j", fast_s3, proxy.url, staging)
    proxy.add(FaultRule("500", method="PUT", times=None))
    d = storage.write_dir(1, 0)
    (d / "f").write_bytes(b"data")
    with pytest.raises(StorageError, match=r"failed after 3 attempts.*InternalError"):
        storage.publish(1, d, ["f"])
    puts = [1 for m, _, f in proxy.stats.log if m == "PUT" and f == "500"]
    # botocore's retries.max_attempts counts retries after the first request; ours wrap whole operations.
    assert len(puts) == (fast_s3.max_attempts + 1) * fast_s3.op_retries


def test_non_retryable_errors_fail_at_once(fast_s3: S3Settings, staging: Path, proxy: FaultProxy) -> None:
    storage = _storage("s3://no-such-bucket-here/j", fast_s3, proxy.url, staging)
    d = storage.write_dir(1, 0)
    (d / "f").write_bytes(b"data")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        storage.publish(1, d, ["f"])
    assert len([1 for m, p, _ in proxy.stats.log if m == "PUT"]) == 1


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (_client_error("SlowDown", 503), True),
        (_client_error("InternalError", 500), True),
        (_client_error("Whatever", 502), True),
        (_client_error("RequestTimeout", 400), True),
        (_client_error("ConditionalRequestConflict", 409), True),
        (_client_error("AccessDenied", 403), False),
        (_client_error("NoSuchBucket", 404), False),
        (_client_error("PreconditionFailed", 412), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ConnectionResetError(), True),
        (ValueError("bug"), False),
    ],
)
def test_is_retryable(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) is retry


def test_retry_call_backs_off_exponentially_with_jitter() -> None:
    sleeps: list[float] = []
    failures = iter(range(3))

    def fn() -> str:
        if next(failures, None) is not None:
            raise ConnectionResetError()
        return "ok"

    assert retry_call(fn, "op", attempts=5, base=1.0, cap=3.0, sleep=sleeps.append) == "ok"
    assert len(sleeps) == 3
    assert 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0 and 0 <= sleeps[2] <= 3.0  # capped


def test_retry_call_gives_up_and_keeps_the_cause() -> None:
    def fn() -> None:
        raise ConnectionResetError("reset by peer")

    with pytest.raises(StorageError, match="failed after 2 attempts: reset by peer") as info:
        retry_call(fn, "op", attempts=2, base=0.0, cap=0.0, sleep=lambda s: None)
    assert isinstance(info.value.__cause__, ConnectionResetError)


def test_open_storage(tmp_path: Path, fast_s3: S3Settings) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    s3 = open_storage("s3://b/p", s3=fast_s3, staging_dir=tmp_path)
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("b", "p")
    with pytest.raises(ValueError):
        S3Storage("s3://", fast_s3, tmp_path)
    assert re.fullmatch(r".*/save/step-000000001\.rank3\.\d+", str(s3.write_dir(1, 3)))
