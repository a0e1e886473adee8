from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotrain_trainer.checkpoint.commit import (
    CommitMarker,
    FileInfo,
    IntegrityError,
    Listing,
    check_sizes,
    hash_file,
    parse_step_dir,
    plan_retention,
    step_dir_name,
    verify_local_files,
)
from spotrain_trainer.checkpoint.storage import CommitConflictError, LocalStorage


def _write_checkpoint(storage: LocalStorage, step: int, payload: bytes = b"x" * 1000) -> CommitMarker:
    d = storage.write_dir(step, 0)
    (d / "__0_0.distcp").write_bytes(payload)
    (d / ".metadata").write_bytes(b"meta")
    names = ["__0_0.distcp", ".metadata"]
    storage.publish(step, d, names)
    marker = CommitMarker(step=step, world_size=1, files={n: hash_file(d / n) for n in names})
    storage.write_commit(marker)
    return marker


def test_step_dir_names() -> None:
    assert step_dir_name(123) == "step-000000123"
    assert parse_step_dir("step-000000123") == 123
    assert parse_step_dir("step-12a") is None and parse_step_dir("COMPLETED") is None
    with pytest.raises(ValueError):
        step_dir_name(-1)


def test_marker_round_trip() -> None:
    m = CommitMarker(
        step=7,
        world_size=2,
        files={"a": FileInfo(3, "ab" * 32), "b": FileInfo(5, "cd" * 32)},
        reason="notice:spot",
        request_id="r1",
        job="j",
        created_by="p",
        duration_seconds=1.5,
        extra={"stall_seconds": 0.1},
    )
    back = CommitMarker.from_bytes(m.to_bytes())
    assert back == m
    assert back.total_bytes == 8
    obj = json.loads(m.to_bytes())
    assert obj["format"] == "spotrain-checkpoint/1" and obj["files"]["a"] == {"size": 3, "sha256": "ab" * 32}


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[1, 2]", b'{"format": "other/9"}', b'{"format": "spotrain-checkpoint/1", "step": 1}'],
)
def test_malformed_markers(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        CommitMarker.from_bytes(data)


def test_verify_local_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"hello")
    (tmp_path / "b").write_bytes(b"world!")
    expected = {"a": hash_file(tmp_path / "a"), "b": hash_file(tmp_path / "b")}
    assert expected["a"].size == 5
    assert verify_local_files(tmp_path, expected) == []
    (tmp_path / "b").write_bytes(b"worl")
    assert verify_local_files(tmp_path, expected) == ["b: size 4 != 6"]
    (tmp_path / "b").write_bytes(b"World!")
    assert verify_local_files(tmp_path, expected) == ["b: sha256 mismatch"]
    (tmp_path / "a").unlink()
    assert verify_local_files(tmp_path, expected)[0] == "a: missing"
    assert check_sizes(expected, {"a": 5}) == ["b: missing"]
    assert check_sizes(expected, {"a": 4, "b": 6}) == ["a: size 4 != 5"]


def L(step: int, committed: bool = True) -> Listing:
    return Listing(step=step, committed=committed)


@pytest.mark.parametrize(
    ("listings", "keep", "protect", "doomed"),
    [
        ([L(1), L(2), L(3), L(4)], 3, (), [1]),
        ([L(1), L(2), L(3), L(4)], 1, (), [1, 2, 3]),
        ([L(1), L(2), L(3), L(4)], 1, (2,), [1, 3]),  # the loaded checkpoint is never deleted
        ([L(1), L(2, False), L(3), L(5, False)], 2, (), [2]),  # abandoned partial older than newest commit
        ([L(1, False), L(2, False)], 1, (), []),  # nothing committed: delete nothing
        ([], 3, (), []),
    ],
)
def test_plan_retention(listings: list[Listing], keep: int, protect: tuple[int, ...], doomed: list[int]) -> None:
    assert plan_retention(listings, keep, protect) == doomed


def test_plan_retention_needs_one() -> None:
    with pytest.raises(ValueError):
        plan_retention([L(1)], 0)


def test_local_storage_commit_list_delete(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "ckpt")
    assert storage.list_checkpoints() == [] and storage.committed_steps() == []
    m1 = _write_checkpoint(storage, 1)
    _write_checkpoint(storage, 5)
    partial = storage.write_dir(9, 0)
    (partial / "__0_0.distcp").write_bytes(b"half")
    assert storage.list_checkpoints() == [L(1), L(5), L(9, False)]
    assert storage.committed_steps() == [5, 1]
    assert storage.read_commit(1) == m1 and storage.read_commit(9) is None
    assert storage.file_sizes(1) == {"__0_0.distcp": 1000, ".metadata": 4}
    assert storage.fetch(1, ["__0_0.distcp"], tmp_path / "cache") == storage.root / "step-000000001"

    storage.delete(1)
    assert storage.committed_steps() == [5] and not (storage.root / "step-000000001").exists()
    storage.clear_step(9)
    assert not (storage.root / "step-000000009").exists()
    storage.clear_step(42)  # absent: no-op


def test_local_commit_is_exclusive_and_idempotent(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    marker = _write_checkpoint(storage, 3)
    storage.write_commit(marker)  # the same content again: fine (a retried commit)
    other = CommitMarker(step=3, world_size=2, files=marker.files)
    with pytest.raises(CommitConflictError):
        storage.write_commit(other)
    assert storage.read_commit(3) == marker
    assert not list((storage.root / "step-000000003").glob(".COMMIT*")), "no temporary file left behind"


def test_local_markers(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "x")
    assert storage.read_completed() is None
    storage.write_completed(b'{"step": 3}')
    assert storage.read_completed() == b'{"step": 3}'
