"""Child processes that cannot outlive whoever started them, even when that one is killed with SIGKILL."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGKILL when the parent thread exits, so an
    # interrupted test run or a killed `dev-up` supervisor leaves no etcd or apiserver behind.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL if it has not gone after ``timeout`` seconds."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def start(
    name: str, argv: Sequence[str | Path], log_dir: Path, env: dict[str, str] | None = None
) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [str(a) for a in argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=die_with_parent,  # the child only calls prctl and setpgrp
        )
    return ManagedProcess(name, popen, log)


class StartupError(RuntimeError):
    pass


def wait_until(
    what: str,
    check: Callable[[], object],
    processes: Sequence[ManagedProcess],
    timeout: float,
    interval: float = 0.25,
) -> None:
    """Polls ``check`` until it returns truthy; fails early, with the log tail, when a process dies."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            if not process.alive():
                raise StartupError(
                    f"{process.name} exited with {process.popen.returncode} while waiting for {what}; "
                    f"last lines of {process.log}:\n{process.log_tail()}"
                )
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name} ({p.log})\n{p.log_tail(15)}" for p in processes)
            raise StartupError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(interval)
