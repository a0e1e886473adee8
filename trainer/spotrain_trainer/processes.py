"""A process and everything it started, read from /proc: find the tree, tell whether a pid still runs, kill it.

Linux only (the worker images and the dev pod runner run there). No torch import.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


def proc_files(name: str) -> Iterator[tuple[int, bytes]]:
    """(pid, content of /proc/<pid>/<name>) for every visible process whose file can be read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/{name}", "rb") as f:
                yield int(entry), f.read()
        except OSError:
            continue


def _ppid_map() -> dict[int, int]:
    """Every visible pid -> its parent pid."""
    out = {}
    for pid, data in proc_files("stat"):
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        rest = data[data.rfind(b")") + 2 :].split()
        if len(rest) >= 2:
            out[pid] = int(rest[1])
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (by parent pid), parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in _ppid_map().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    state = data[data.rfind(b")") + 2 :].split()[0]
    return state != b"Z"


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to ``pid`` and all its descendants; returns the pids signalled."""
    pids = process_tree(pid)
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)
    return pids
