"""The status file the local rank 0 worker keeps in the per-pod state directory for the control server."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from spotrain_protocol import status as keys
from spotrain_protocol.constants import STATUS_FILE

from .checkpoint.commit import utc_now_rfc3339
from .statefiles import atomic_write_json, read_json

# Carried over from the previous worker generation of this pod (the state directory outlives workers).
_CARRIED = (
    keys.LAST_CHECKPOINT,
    keys.HANDLED_REQUEST_ID,
    "checkpoints_total",
    "checkpoint_failures_total",
    "stall_seconds_total",
    "rendezvous_round",
    keys.SCRIPT_FAILURES,
)


def default_status(job: str, pod: str) -> dict[str, Any]:
    """The status file's fields before the worker fills them in; the operator reads those in
    spotrain_protocol.status."""
    return {
        "job": job,
        "pod": pod,
        "phase": "starting",
        keys.STEP: None,
        "world_size": None,
        "rank": None,
        "restart_count": None,
        "rendezvous_round": None,
        keys.RENDEZVOUS_ID: None,
        "steps_per_second": None,
        keys.HANDLED_REQUEST_ID: None,
        keys.LAST_CHECKPOINT: None,
        "restored_step": None,
        keys.COMPLETED: False,
        "checkpoint_interval_seconds": None,
        "checkpoint_in_flight_step": None,
        "last_checkpoint_error": None,
        "checkpoints_total": {"regular": 0, "notice": 0, "final": 0, "manual": 0},
        "checkpoint_failures_total": 0,
        "stall_seconds_total": 0.0,
        keys.ERROR: None,
        "error_step": None,
        keys.SCRIPT_FAILURES: 0,  # uncaught exceptions of the script itself in this pod, across restarts (failures.py)
        "pid": None,
        "updated_at": None,
        "updated_unix": None,
    }


class StatusReporter:
    """Thread-safe; writes only when ``path`` is set (the local rank 0 worker)."""

    def __init__(self, path: Path | None, *, job: str, pod: str, min_interval: float = 1.0) -> None:
        self.path = path
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._last_write = 0.0
        self.data = default_status(job, pod)
        previous = read_json(path) if path is not None else None
        if previous:
            for key in _CARRIED:
                if key in previous and previous[key] is not None:
                    self.data[key] = previous[key]
        self.data["pid"] = os.getpid()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)

    def count_checkpoint(self, kind: str, stall_seconds: float) -> None:
        with self._lock:
            totals = dict(self.data.get("checkpoints_total") or {})
            totals[kind] = int(totals.get(kind, 0)) + 1
            self.data["checkpoints_total"] = totals
            self.data["stall_seconds_total"] = float(self.data.get("stall_seconds_total") or 0.0) + stall_seconds

    def count_failure(self, error: str) -> None:
        with self._lock:
            self.data["checkpoint_failures_total"] = int(self.data.get("checkpoint_failures_total") or 0) + 1
            self.data["last_checkpoint_error"] = error

    def get(self, key: str) -> Any:
        with self._lock:
            return self.data.get(key)

    def flush(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_write < self.min_interval:
                return
            self.data["updated_at"] = utc_now_rfc3339()
            self.data["updated_unix"] = time.time()
            snapshot = dict(self.data)
            atomic_write_json(self.path, snapshot, fsync=force)
            self._last_write = now


def status_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATUS_FILE
