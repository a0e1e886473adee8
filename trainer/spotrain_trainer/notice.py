"""Notice triggers and the per-step coordination flag.

Two triggers, both only *set a flag*; the training loop acts on it at the next step boundary:

* SIGTERM (graceful node shutdown, eviction, torchrun forwarding its own SIGTERM, or torchrun stopping the
  workers to admit a new node). The handler does nothing but set a flag.
* A checkpoint request from the control server: ``request.json`` in the per-pod state directory, polled by
  every worker of the pod (a stat per step); the local rank 0 worker reports it as handled.

At each step boundary every rank contributes its flags to one ``all_reduce(MAX)``: if any rank saw a notice,
all ranks take the same coordinated checkpoint at the same step.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from spotrain_protocol import CheckpointRequest, InvalidMessage
from spotrain_protocol.constants import REQUEST_FILE

from .statefiles import read_json

log = logging.getLogger(__name__)


class NoticeMonitor:
    def __init__(self, state_dir: Path | None, *, handled_request_id: str | None = None) -> None:
        self.request_path: Path | None = None
        self.handled_request_id: str | None = None
        self._cache_key: tuple[int, int] | None = None
        self._cached: CheckpointRequest | None = None
        self.watch(state_dir, handled_request_id)
        self.sigterm_received = False
        self.sigterm_time: float | None = None
        self._previous_handler: Any = None
        self._installed = False

    def watch(self, state_dir: Path | None, handled_request_id: str | None) -> None:
        """Poll ``state_dir`` for checkpoint requests (None: do not), ignoring ``handled_request_id``."""
        self.request_path = None if state_dir is None else Path(state_dir) / REQUEST_FILE
        self.handled_request_id = handled_request_id
        self._cache_key, self._cached = None, None

    # ------------------------------------------------------------------------------------------ SIGTERM
    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.sigterm_received = True
        if self.sigterm_time is None:
            self.sigterm_time = time.time()

    def install(self) -> None:
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous_handler or signal.SIG_DFL)
            self._installed = False

    # ----------------------------------------------------------------------------------------- requests
    def current_request(self) -> CheckpointRequest | None:
        """The request in the state directory (handled or not), re-read only when the file changed."""
        if self.request_path is None:
            return None
        try:
            st = os.stat(self.request_path)
        except FileNotFoundError:
            self._cache_key, self._cached = None, None
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key != self._cache_key:
            try:
                # Written by the control server, which accepted only valid requests.
                req: CheckpointRequest | None = CheckpointRequest.from_json(read_json(self.request_path))
            except InvalidMessage:
                req = None
            self._cache_key, self._cached = key, req
        return self._cached

    def pending_request(self) -> CheckpointRequest | None:
        req = self.current_request()
        if req is None or req.id == self.handled_request_id:
            return None
        return req

    def local_flag(self) -> bool:
        return self.sigterm_received or self.pending_request() is not None

    def mark_handled(self, request_id: str | None) -> None:
        if request_id:
            self.handled_request_id = request_id


def coordinate_flags(values: Sequence[float], group: Any = None) -> list[float]:
    """Element-wise MAX of ``values`` over all ranks of ``group``, which must reduce CPU tensors (gloo, or the CPU
    side of ``cpu:gloo,cuda:nccl``; see :func:`reduces_cpu_tensors`)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return [float(v) for v in t.tolist()]


def reduces_cpu_tensors(group: Any = None) -> bool:
    """Whether ``group`` (None: the default group) has a backend for CPU tensors.

    ``get_backend_config`` lists one ``device:backend`` pair per device: ``cpu:gloo,cuda:gloo`` for gloo,
    ``cpu:gloo,cuda:nccl`` for a mixed group, ``cuda:nccl`` for NCCL alone.
    """
    import torch.distributed as dist

    config = dist.get_backend_config(group)
    return any(part.strip().startswith("cpu:") for part in config.split(","))


#: A second save after an operator-requested checkpoint must fit this many times over before the deadline: a
#: save's duration varies with the store's load, and a save cut short by SIGKILL is worth nothing.
SECOND_SAVE_SAFETY_FACTOR = 2.0
#: ...plus this much, for the exit and the agent's shutdown after it.
SECOND_SAVE_MARGIN_SECONDS = 5.0


def parse_deadline(value: str | None) -> float | None:
    """An RFC 3339 deadline (``2026-01-01T08:22:00Z``) as unix time; None when absent or unreadable."""
    if not value:
        return None
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        log.warning("ignoring unreadable checkpoint deadline %r", value)
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def second_save_fits(*, deadline_unix: float | None, now_unix: float, estimate_seconds: float) -> bool:
    """Whether a second full save after an operator-requested checkpoint surely ends before the deadline.

    Without a known deadline, or without a measured save, it does not: the state of the requested checkpoint is
    durable already, and two full saves must never both sit on the critical path of a notice.
    """
    if deadline_unix is None or estimate_seconds <= 0:
        return False
    needed = estimate_seconds * SECOND_SAVE_SAFETY_FACTOR + SECOND_SAVE_MARGIN_SECONDS
    return now_unix + needed <= deadline_unix
