"""The per-pod state directory shared by the control server and the local rank 0 worker.

Each file has exactly one writer and is replaced atomically (write a temporary file in the same directory,
fsync, ``os.replace``), so a reader sees the old or the new content, never a torn one. The directory outlives
the worker processes, so the status survives restarts between rendezvous rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), fsync=fsync)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if it is missing or not a JSON object."""
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
