"""A script's own crash is recorded for the failure budget (and survives torchrun's restarts); a peer's loss is
not; a clean exit after a notice checkpoint never reaches the hook."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spotrain_trainer.failures import is_peer_loss
from spotrain_trainer.statefiles import read_json


@pytest.mark.parametrize("error", [
    RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5"),
    RuntimeError("Broken pipe"),
    ConnectionResetError("ECONNRESET"),
])
def test_a_peers_loss_is_not_the_scripts_failure(error: BaseException) -> None:
    assert is_peer_loss(error)


def test_torch_distributed_errors_are_peer_losses() -> None:
    import torch.distributed as dist

    assert is_peer_loss(dist.DistNetworkError("socket closed"))


@pytest.mark.parametrize("error", [ValueError("bad shape"), KeyError("labels"), ZeroDivisionError("division"),
                                   RuntimeError("CUDA out of memory")])
def test_script_errors_count(error: BaseException) -> None:
    assert not is_peer_loss(error)


SCRIPT = """
import sys
from pathlib import Path
from spotrain_trainer.failures import record_script_failures
from spotrain_trainer.status import StatusReporter
status = StatusReporter(Path(sys.argv[1]), job="j", pod="p")
record_script_failures(status, lambda: 17)
if sys.argv[2] == "crash":
    raise ValueError("the same bug at step 17")
if sys.argv[2] == "peer":
    raise RuntimeError("Connection closed by peer")
raise SystemExit(75)
"""


def _run(tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(tmp_path / "status.json"), how],
                          capture_output=True, text=True, timeout=60)


def test_crashes_are_counted_across_restarts_and_peer_losses_are_not(tmp_path: Path) -> None:
    assert _run(tmp_path, "crash").returncode == 1
    assert _run(tmp_path, "crash").returncode == 1  # torchrun's restart: a new process, the same state dir
    status = read_json(tmp_path / "status.json") or {}
    assert status["script_failures"] == 2 and status["error_step"] == 17
    assert status["error"] == "ValueError: the same bug at step 17"
    assert _run(tmp_path, "peer").returncode == 1
    assert _run(tmp_path, "notice").returncode == 75
    assert (read_json(tmp_path / "status.json") or {})["script_failures"] == 2
