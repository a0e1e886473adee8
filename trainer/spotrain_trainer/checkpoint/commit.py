"""Commit markers, integrity checks and retention.

A checkpoint is the directory ``step-%09d`` under the checkpoint URI. It counts only once its ``COMMIT``
marker exists; the marker is written last, after every data file is durable, and lists every file of the
checkpoint with its size and SHA-256. Loading verifies all of them, so a checkpoint that was cut short (files
missing, truncated or corrupted, or no marker at all) is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..constants import COMMIT_FORMAT, STEP_DIR_PREFIX

_HASH_CHUNK = 4 * 1024 * 1024


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, committed or read."""


class IntegrityError(CheckpointError):
    """A committed checkpoint does not match its marker."""


def step_dir_name(step: int) -> str:
    if step < 0:
        raise ValueError("step must be >= 0")
    return f"{STEP_DIR_PREFIX}{step:09d}"


def parse_step_dir(name: str) -> int | None:
    if not name.startswith(STEP_DIR_PREFIX):
        return None
    digits = name[len(STEP_DIR_PREFIX) :]
    if not digits.isdigit():
        return None
    return int(digits)


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}


def hash_file(path: Path) -> FileInfo:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_HASH_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            h.update(chunk)
    return FileInfo(size=size, sha256=h.hexdigest())


def utc_now_rfc3339(ts: float | None = None) -> str:
    """The trainer's one RFC 3339 formatter: ``ts`` (unix time; now by default) in UTC to the millisecond,
    ``2026-01-02T03:04:05.678Z``."""
    t = _time.time() if ts is None else ts
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class CommitMarker:
    step: int
    world_size: int
    files: dict[str, FileInfo]
    time: str = field(default_factory=utc_now_rfc3339)
    unix_time: float = field(default_factory=_time.time)
    reason: str = "regular"
    request_id: str | None = None
    job: str | None = None
    created_by: str | None = None
    duration_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": COMMIT_FORMAT,
            "step": self.step,
            "world_size": self.world_size,
            "time": self.time,
            "unix_time": self.unix_time,
            "reason": self.reason,
            "request_id": self.request_id,
            "job": self.job,
            "created_by": self.created_by,
            "duration_seconds": self.duration_seconds,
            "total_bytes": self.total_bytes,
            "files": {name: info.to_json() for name, info in sorted(self.files.items())},
            "extra": self.extra,
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CommitMarker:
        if obj.get("format") != COMMIT_FORMAT:
            raise IntegrityError(f"unknown commit marker format {obj.get('format')!r}")
        try:
            files = {
                str(name): FileInfo(size=int(info["size"]), sha256=str(info["sha256"]))
                for name, info in dict(obj["files"]).items()
            }
            return cls(
                step=int(obj["step"]),
                world_size=int(obj["world_size"]),
                files=files,
                time=str(obj["time"]),
                unix_time=float(obj.get("unix_time") or 0.0),
                reason=str(obj.get("reason") or "regular"),
                request_id=obj.get("request_id"),
                job=obj.get("job"),
                created_by=obj.get("created_by"),
                duration_seconds=obj.get("duration_seconds"),
                extra=dict(obj.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed commit marker: {exc}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> CommitMarker:
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise IntegrityError(f"commit marker is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise IntegrityError("commit marker is not a JSON object")
        return cls.from_json(obj)


def check_sizes(expected: Mapping[str, FileInfo], actual_sizes: Mapping[str, int]) -> list[str]:
    """Problems found comparing the marker's file list with the sizes found in storage."""
    problems = []
    for name, info in sorted(expected.items()):
        if name not in actual_sizes:
            problems.append(f"{name}: missing")
        elif actual_sizes[name] != info.size:
            problems.append(f"{name}: size {actual_sizes[name]} != {info.size}")
    return problems


def verify_local_files(directory: Path, expected: Mapping[str, FileInfo]) -> list[str]:
    """Problems found checking the files of a checkpoint in a local directory (size, then SHA-256)."""
    problems: list[str] = []
    for name, info in sorted(expected.items()):
        path = directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if size != info.size:
            problems.append(f"{name}: size {size} != {info.size}")
            continue
        actual = hash_file(path)
        if actual.sha256 != info.sha256:
            problems.append(f"{name}: sha256 mismatch")
    return problems


@dataclass(frozen=True)
class Listing:
    """What storage holds for one step directory."""

    step: int
    committed: bool


def plan_retention(listings: Iterable[Listing], keep_last: int, protect: Iterable[int] = ()) -> list[int]:
    """Steps to delete: committed checkpoints beyond the newest ``keep_last``, and uncommitted (abandoned)
    directories older than the newest committed checkpoint. Never a protected step, never the newest
    ``keep_last`` committed ones; nothing at all while no checkpoint is committed."""
    if keep_last < 1:
        raise ValueError("keep_last must be >= 1")
    items = sorted(listings, key=lambda x: x.step, reverse=True)
    committed = [x.step for x in items if x.committed]
    if not committed:
        return []
    newest = committed[0]
    keep = set(committed[:keep_last]) | set(protect)
    doomed = [s for s in committed[keep_last:] if s not in keep]
    doomed += [x.step for x in items if not x.committed and x.step < newest and x.step not in keep]
    return sorted(set(doomed))
