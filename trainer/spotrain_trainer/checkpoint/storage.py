"""Where checkpoints live: a local or volume path, or S3 (and S3-compatible stores) through boto3.

Design: DCP always writes with its own ``FileSystemWriter`` to a local directory, and the storage then makes
those files durable where they belong.

* Local/volume path: DCP writes straight into the final step directory (on a volume shared by all pods for
  multi-node jobs); ``publish`` fsyncs the files and the directory. The commit marker is written to a temporary
  file, fsynced, and hard-linked into place (``link`` fails if the marker exists: an atomic "if none match").
* S3: DCP writes to a node-local staging directory, then every rank uploads its own files with boto3's
  transfer manager (multipart above a threshold) and the commit marker is a conditional
  ``put_object(..., IfNoneMatch="*")``. We chose staging + upload over a DCP ``StorageWriter`` that streams to
  S3 because (1) DCP's file writer, its async staging and its ``.metadata`` handling stay exactly the tested
  upstream code, (2) each file's SHA-256 is computed from the bytes that were actually uploaded and recorded in
  the commit marker, (3) uploads get whole-file retries with backoff independent of DCP's plan/collective
  phases, and (4) an async checkpoint's upload runs after DCP's collectives are done, so a slow or throttled
  store never holds a collective open. The cost is node-local disk for one checkpoint shard (an ``emptyDir``)
  and reading it back once to upload. Loading downloads the checkpoint to node-local disk, verifies every file
  against the marker and lets DCP's ``FileSystemReader`` reshard from there.

Retries: botocore's own retry modes (``adaptive`` by default, which also rate-limits on throttling) retry
each request; around every whole operation (one file upload/download, the commit, a listing) we retry again
with exponential backoff and full jitter on throttling (SlowDown, 503), 5xx, timeouts and connection resets.
An operation that still fails raises :class:`StorageError`; nothing is silently dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ..config import S3Settings
from ..constants import COMMIT_FILE, COMPLETED_FILE
from .commit import CheckpointError, CommitMarker, Listing, parse_step_dir, step_dir_name

log = logging.getLogger(__name__)

T = TypeVar("T")


class StorageError(CheckpointError):
    """A storage operation failed for good (after retries) or cannot succeed."""


class CommitConflictError(StorageError):
    """A different commit marker already exists for this step."""


class TransientStorageError(Exception):
    """A problem worth retrying that botocore does not classify (a short object, a failed batch delete)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStorage(ABC):
    """Operations the checkpointer needs. Step directories are named ``step-%09d``."""

    uri: str
    #: True when DCP writes straight into the final directory (a shared filesystem).
    writes_in_place: bool

    @abstractmethod
    def list_checkpoints(self) -> list[Listing]: ...

    def committed_steps(self) -> list[int]:
        """Committed steps, newest first."""
        return sorted((x.step for x in self.list_checkpoints() if x.committed), reverse=True)

    @abstractmethod
    def read_commit(self, step: int) -> CommitMarker | None:
        """The marker of ``step``; None if there is none. Raises IntegrityError if it is malformed."""

    @abstractmethod
    def write_commit(self, marker: CommitMarker) -> None:
        """Write the marker only if none exists (idempotent for identical content)."""

    @abstractmethod
    def file_sizes(self, step: int) -> dict[str, int]:
        """Sizes of the files stored for ``step`` (the marker excluded)."""

    @abstractmethod
    def write_dir(self, step: int, rank: int) -> Path:
        """Local directory DCP writes this rank's files of ``step`` to."""

    @abstractmethod
    def publish(self, step: int, local_dir: Path, names: Iterable[str]) -> None:
        """Make the named files of ``local_dir`` durable as part of checkpoint ``step``."""

    @abstractmethod
    def fetch(self, step: int, names: Iterable[str], cache_dir: Path) -> Path:
        """A local directory holding the named files of ``step`` (downloaded into ``cache_dir`` if needed)."""

    @abstractmethod
    def fetch_dir(self, step: int, cache_dir: Path) -> Path:
        """The directory :meth:`fetch` returns, without fetching anything."""

    @abstractmethod
    def fetch_into(self, step: int, names: Iterable[str], directory: Path) -> None:
        """Bring the named files of ``step`` into ``directory`` (a :meth:`fetch_dir`), next to those already there."""

    @abstractmethod
    def delete(self, step: int) -> None:
        """Delete a checkpoint: the marker first, so a half-deleted checkpoint is never committed."""

    @abstractmethod
    def clear_step(self, step: int) -> None:
        """Remove whatever is stored for ``step`` (marker first). Called before a new checkpoint of ``step`` is
        written: anything there is a leftover of an attempt this job generation did not load (cut short, or
        from a timeline abandoned by falling back to an older checkpoint)."""

    @abstractmethod
    def cleanup_write_dir(self, step: int, rank: int) -> None:
        """Remove this rank's local staging files after ``publish`` (no-op when writing in place)."""

    @abstractmethod
    def write_marker(self, name: str, data: bytes) -> None:
        """Write a small object at the top of the checkpoint URI (e.g. the completion marker)."""

    @abstractmethod
    def read_marker(self, name: str) -> bytes | None: ...

    def write_completed(self, data: bytes) -> None:
        self.write_marker(COMPLETED_FILE, data)

    def read_completed(self) -> bytes | None:
        return self.read_marker(COMPLETED_FILE)


# --------------------------------------------------------------------------------------------------- local
class LocalStorage(CheckpointStorage):
    writes_in_place = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def _dir(self, step: int) -> Path:
        return self.root / step_dir_name(step)

    def list_checkpoints(self) -> list[Listing]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            step = parse_step_dir(entry.name)
            if step is None or not entry.is_dir():
                continue
            out.append(Listing(step=step, committed=(Path(entry.path) / COMMIT_FILE).is_file()))
        return sorted(out, key=lambda x: x.step)

    def read_commit(self, step: int) -> CommitMarker | None:
        try:
            data = (self._dir(step) / COMMIT_FILE).read_bytes()
        except FileNotFoundError:
            return None
        return CommitMarker.from_bytes(data)

    def write_commit(self, marker: CommitMarker) -> None:
        d = self._dir(marker.step)
        data = marker.to_bytes()
        tmp = d / f".{COMMIT_FILE}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, d / COMMIT_FILE)
        except FileExistsError:
            existing = (d / COMMIT_FILE).read_bytes()
            if existing != data:
                raise CommitConflictError(f"{d / COMMIT_FILE} already exists with different content") from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(d)

    def file_sizes(self, step: int) -> dict[str, int]:
        d = self._dir(step)
        try:
            return {e.name: e.stat().st_size for e in os.scandir(d) if e.is_file() and e.name != COMMIT_FILE}
        except FileNotFoundError:
            return {}

    def write_dir(self, step: int, rank: int) -> Path:
        d = self._dir(step)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def publish(self, step: int, local_dir: Path, names: Iterable[str]) -> None:
        for name in names:
            _fsync_file(local_dir / name)
        _fsync_dir(local_dir)
        _fsync_dir(self.root)
        with contextlib.suppress(OSError):  # the root itself may have been created by the first checkpoint
            _fsync_dir(self.root.parent)

    def fetch(self, step: int, names: Iterable[str], cache_dir: Path) -> Path:
        return self._dir(step)

    def fetch_dir(self, step: int, cache_dir: Path) -> Path:
        return self._dir(step)

    def fetch_into(self, step: int, names: Iterable[str], directory: Path) -> None:
        return None  # read in place

    def delete(self, step: int) -> None:
        d = self._dir(step)
        (d / COMMIT_FILE).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            _fsync_dir(d)
        shutil.rmtree(d, ignore_errors=True)

    def clear_step(self, step: int) -> None:
        if self._dir(step).exists():
            self.delete(step)

    def cleanup_write_dir(self, step: int, rank: int) -> None:
        return None

    def write_marker(self, name: str, data: bytes) -> None:
        from ..statefiles import atomic_write_bytes

        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / name, data)
        _fsync_dir(self.root)

    def read_marker(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None


# ------------------------------------------------------------------------------------------------------ s3
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "Busy",
    "ConditionalRequestConflict",  # 409: a concurrent conditional write is in progress; try again
    "OperationAborted",
}


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx, timeouts and connection problems are worth retrying; the rest is not."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectionError,
        ConnectTimeoutError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _RETRYABLE_CODES or status >= 500 or status == 429
    if isinstance(exc, S3UploadFailedError | S3TransferFailedError):
        inner = exc.__cause__ or exc.__context__
        return inner is None or is_retryable(inner)
    if isinstance(
        exc,
        ConnectionError
        | ConnectionClosedError
        | EndpointConnectionError
        | ConnectTimeoutError
        | ReadTimeoutError
        | ResponseStreamingError
        | IncompleteReadError,
    ):
        return True
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError | TimeoutError):
        return True
    # urllib3 protocol errors (a reset while reading a response) surface under several names.
    return type(exc).__name__ in ("ProtocolError", "ProxyError", "RemoteDisconnected", "IncompleteRead")


def retry_call(
    fn: Callable[[], T],
    what: str,
    *,
    attempts: int,
    base: float,
    cap: float,
    retryable: Callable[[BaseException], bool] = is_retryable,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` up to ``attempts`` times with exponential backoff and full jitter between attempts."""
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return fn()
        except StorageError:
            raise  # already a final verdict (e.g. a conflicting commit marker)
        except Exception as exc:
            last = exc
            if not retryable(exc):
                raise StorageError(f"{what} failed: {exc}") from exc
            if attempt == attempts - 1:
                break
            delay = random.uniform(0.0, min(cap, base * (2**attempt)))
            log.warning("%s failed (attempt %d/%d): %s; retrying in %.2fs", what, attempt + 1, attempts, exc, delay)
            sleep(delay)
    raise StorageError(f"{what} failed after {attempts} attempts: {last}") from last


def make_s3_client(settings: S3Settings) -> Any:
    import boto3
    from botocore.config import Config

    retries: Any = {"mode": settings.retry_mode, "max_attempts": settings.max_attempts}
    config = Config(
        retries=retries,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=max(10, settings.max_concurrency * 2),
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
    )


class S3Storage(CheckpointStorage):
    writes_in_place = False

    def __init__(self, uri: str, settings: S3Settings, staging_dir: Path, client: Any | None = None) -> None:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri}")
        rest = uri[len("s3://") :].strip("/")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri}")
        self.uri = f"s3://{rest}"
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        self.staging_dir = Path(staging_dir)
        self.client = client if client is not None else make_s3_client(settings)
        from boto3.s3.transfer import TransferConfig

        self.transfer_config = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
            max_concurrency=settings.max_concurrency,
            use_threads=True,
        )

    # -- helpers
    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _step_prefix(self, step: int) -> str:
        return self._key(step_dir_name(step)) + "/"

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        s = self.settings
        return retry_call(fn, what, attempts=s.op_retries, base=s.backoff_base, cap=s.backoff_max)

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
                if token:
                    kwargs["ContinuationToken"] = token
                resp = self.client.list_objects_v2(**kwargs)
                out.extend(resp.get("Contents", []))
                if not resp.get("IsTruncated"):
                    return out
                token = resp.get("NextContinuationToken")

        return self._retry(run, f"list s3://{self.bucket}/{prefix}")

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        def run() -> bytes | None:
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise
            return bytes(resp["Body"].read())

        return self._retry(run, f"get s3://{self.bucket}/{key}")

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]

            def run(batch: list[dict[str, str]] = batch) -> None:
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                errors = resp.get("Errors") or []
                if errors:
                    raise TransientStorageError(f"delete failed for {len(errors)} objects: {errors[0]}")

            self._retry(run, f"delete {len(batch)} objects under s3://{self.bucket}/{self.prefix}")

    # -- interface
    def list_checkpoints(self) -> list[Listing]:
        base = self._key() + "/" if self.prefix else ""
        steps: dict[int, bool] = {}
        for obj in self._list(base + "step-"):
            rel = obj["Key"][len(base) :]
            dirname, _, name = rel.partition("/")
            step = parse_step_dir(dirname)
            if step is None:
                continue
            steps[step] = steps.get(step, False) or name == COMMIT_FILE
        return [Listing(step=s, committed=c) for s, c in sorted(steps.items())]

    def read_commit(self, step: int) -> CommitMarker | None:
        data = self._get(self._step_prefix(step) + COMMIT_FILE)
        return None if data is None else CommitMarker.from_bytes(data)

    def write_commit(self, marker: CommitMarker) -> None:
        from botocore.exceptions import ClientError

        key = self._step_prefix(marker.step) + COMMIT_FILE
        data = marker.to_bytes()

        def run() -> None:
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*", ContentType="application/json"
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code != "PreconditionFailed" and status != 412:
                    raise
                # The marker exists: ours (an earlier attempt whose response was lost) or someone else's.
                existing = self._get(key)
                if existing != data:
                    raise CommitConflictError(f"s3://{self.bucket}/{key} exists with different content") from exc

        self._retry(run, f"commit s3://{self.bucket}/{key}")

    def file_sizes(self, step: int) -> dict[str, int]:
        prefix = self._step_prefix(step)
        out = {}
        for obj in self._list(prefix):
            name = obj["Key"][len(prefix) :]
            if name and name != COMMIT_FILE and "/" not in name:
                out[name] = int(obj["Size"])
        return out

    def write_dir(self, step: int, rank: int) -> Path:
        d = self.staging_dir / "save" / f"{step_dir_name(step)}.rank{rank}.{os.getpid()}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def upload_file(self, path: Path, key: str) -> None:
        size = path.stat().st_size

        def run() -> None:
            self.client.upload_file(str(path), self.bucket, key, Config=self.transfer_config)
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            if int(head["ContentLength"]) != size:
                raise TransientStorageError(f"s3://{self.bucket}/{key}: stored size {head['ContentLength']} != {size}")

        self._retry(run, f"upload {path.name} to s3://{self.bucket}/{key}")

    def publish(self, step: int, local_dir: Path, names: Iterable[str]) -> None:
        prefix = self._step_prefix(step)
        for name in names:
            self.upload_file(local_dir / name, prefix + name)

    def fetch_dir(self, step: int, cache_dir: Path) -> Path:
        return cache_dir / step_dir_name(step)

    def fetch(self, step: int, names: Iterable[str], cache_dir: Path) -> Path:
        d = self.fetch_dir(step, cache_dir)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        self.fetch_into(step, names, d)
        return d

    def fetch_into(self, step: int, names: Iterable[str], directory: Path) -> None:
        prefix = self._step_prefix(step)
        for name in names:
            target = directory / name

            def run(name: str = name, target: Path = target) -> None:
                self.client.download_file(self.bucket, prefix + name, str(target), Config=self.transfer_config)

            self._retry(run, f"download s3://{self.bucket}/{prefix}{name}")

    def delete(self, step: int) -> None:
        prefix = self._step_prefix(step)
        commit_key = prefix + COMMIT_FILE
        self._retry(lambda: self.client.delete_object(Bucket=self.bucket, Key=commit_key), f"delete {commit_key}")
        keys = [obj["Key"] for obj in self._list(prefix) if obj["Key"] != commit_key]
        if keys:
            self._delete_keys(keys)

    def clear_step(self, step: int) -> None:
        prefix = self._step_prefix(step)
        objs = self._list(prefix)
        if not objs:
            return
        commit_key = prefix + COMMIT_FILE
        if any(o["Key"] == commit_key for o in objs):
            self._retry(lambda: self.client.delete_object(Bucket=self.bucket, Key=commit_key), f"delete {commit_key}")
        rest = [o["Key"] for o in objs if o["Key"] != commit_key]
        if rest:
            self._delete_keys(rest)

    def cleanup_write_dir(self, step: int, rank: int) -> None:
        d = self.staging_dir / "save" / f"{step_dir_name(step)}.rank{rank}.{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)

    def write_marker(self, name: str, data: bytes) -> None:
        key = self._key(name)
        self._retry(
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/json"),
            f"put s3://{self.bucket}/{key}",
        )

    def read_marker(self, name: str) -> bytes | None:
        return self._get(self._key(name))


def open_storage(uri: str, *, s3: S3Settings | None = None, staging_dir: Path | None = None) -> CheckpointStorage:
    """Storage for a normalized checkpoint URI (see :func:`spotrain_trainer.config.normalize_checkpoint_uri`)."""
    if uri.startswith("s3://"):
        return S3Storage(uri, s3 or S3Settings(), staging_dir or Path("/tmp/spotrain-staging"))
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return LocalStorage(uri)
