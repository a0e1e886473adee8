from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from spotrain_trainer.notice import NoticeMonitor, coordinate_flags
from spotrain_trainer.statefiles import atomic_write_json, read_json
from spotrain_trainer.status import StatusReporter


def test_request_file_and_handled_id(tmp_path: Path) -> None:
    monitor = NoticeMonitor(tmp_path, handled_request_id="old")
    assert monitor.pending_request() is None and not monitor.local_flag()
    atomic_write_json(tmp_path / "request.json", {"id": "old", "reason": "x"})
    assert monitor.pending_request() is None, "already handled by an earlier worker generation"
    atomic_write_json(tmp_path / "request.json", {"id": "new", "reason": "spot", "deadline": "2026-01-01T00:00:00Z"})
    req = monitor.pending_request()
    assert req is not None and (req.id, req.reason, req.deadline) == ("new", "spot", "2026-01-01T00:00:00Z")
    assert monitor.local_flag()
    monitor.mark_handled("new")
    assert monitor.pending_request() is None
    (tmp_path / "request.json").write_text("garbage")
    assert monitor.current_request() is None
    (tmp_path / "request.json").unlink()
    assert monitor.current_request() is None


def test_no_state_dir_means_no_requests() -> None:
    monitor = NoticeMonitor(None)
    assert monitor.pending_request() is None and not monitor.local_flag()


def test_sigterm_only_sets_a_flag() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    monitor = NoticeMonitor(None)
    monitor.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert monitor.sigterm_received and monitor.local_flag() and monitor.sigterm_time is not None
    finally:
        monitor.uninstall()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_coordinate_flags_without_a_process_group() -> None:
    assert coordinate_flags([0, 1, 0.5]) == [0.0, 1.0, 0.5]


def test_status_reporter_carries_over_and_throttles(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    atomic_write_json(
        path,
        {
            "handled_request_id": "r1",
            "last_checkpoint": {"step": 9},
            "checkpoints_total": {"regular": 2, "notice": 1, "final": 0},
            "rendezvous_round": 4,
            "phase": "failed",
            "error": "old",
        },
    )
    rep = StatusReporter(path, job="j", pod="p", min_interval=3600)
    assert rep.get("handled_request_id") == "r1" and rep.get("last_checkpoint") == {"step": 9}
    assert rep.get("phase") == "starting" and rep.get("error") is None, "per-generation fields start afresh"
    rep.count_checkpoint("regular", 0.5)
    rep.count_failure("boom")
    rep.update(step=3)
    rep.flush(force=True)
    data = read_json(path)
    assert data is not None
    assert data["checkpoints_total"]["regular"] == 3 and data["checkpoint_failures_total"] == 1
    assert data["last_checkpoint_error"] == "boom" and data["step"] == 3 and data["rendezvous_round"] == 4
    rep.update(step=4)
    rep.flush()  # throttled
    assert read_json(path)["step"] == 3  # type: ignore[index]
    rep.flush(force=True)
    assert read_json(path)["step"] == 4  # type: ignore[index]


def test_status_reporter_without_path_writes_nothing(tmp_path: Path) -> None:
    rep = StatusReporter(None, job="j", pod="p")
    rep.update(step=1)
    rep.flush(force=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("payload", [{"a": 1}, [1, 2]])
def test_atomic_json(tmp_path: Path, payload: object) -> None:
    atomic_write_json(tmp_path / "f.json", payload)
    assert read_json(tmp_path / "f.json") == (payload if isinstance(payload, dict) else None)
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
