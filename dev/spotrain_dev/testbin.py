"""The control plane binaries, built once by dev/testbin/build.sh and cached by version outside the repo."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "testbin" / "build.sh"


def bin_dir() -> Path:
    cache = os.environ.get("SPOTRAIN_TESTBIN_CACHE", str(Path.home() / ".cache" / "spotrain" / "testbin"))
    return Path(cache) / "bin"


def path(name: str) -> Path:
    return bin_dir() / name


def ensure(progress: Callable[[str], None]) -> Path:
    """Builds whatever is missing (a cold build takes tens of minutes and prints its progress) and returns
    the directory of the binaries; when everything is cached this only checks the versions."""
    progress("checking control plane binaries")
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    return bin_dir()
