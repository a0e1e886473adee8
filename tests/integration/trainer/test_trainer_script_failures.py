"""With real torchrun agents: a script that crashes at the same step every time is restarted by torchrun, and each
crash is counted in the pod's status for the operator's failure budget; a peer that dies costs the survivor a
restart that is not counted."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from spotrain_dev.testing import wait_for
from spotrain_trainer.statefiles import read_json

if TYPE_CHECKING:
    from tests.integration.trainer.conftest import MakeJob

CRASHING = """
import torch
import spotrain_trainer as st

with st.Session(checkpoint_every_steps=1000) as session:
    model = torch.nn.Linear(2, 1)
    session.restore(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    for step in session.steps(100):
        if step == 3:
            raise ValueError("the same bug at step 3")
"""


def _status(job_pod_dir: Path) -> dict:
    return read_json(job_pod_dir / "state" / "status.json") or {}


@pytest.mark.timeout(300)
def test_a_crashing_script_is_counted_at_every_restart(tmp_path: Path, make_job: MakeJob) -> None:
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING)
    job = make_job(script=[str(script)], env={"SPOTRAIN_MAX_RESTARTS": "2"}, min_nodes=1, max_nodes=1)
    pod = job.start_pod("pod-a")
    assert pod.proc is not None
    assert pod.proc.wait(timeout=240) != 0, "torchrun gives up once its restarts are spent"
    status = _status(pod.dir)
    assert status["script_failures"] == 3, status  # the first run and both restarts
    assert status["error"] == "ValueError: the same bug at step 3" and status["error_step"] == 3


@pytest.mark.timeout(420)
def test_a_dead_peer_is_not_the_survivors_failure(make_job: MakeJob) -> None:
    job = make_job("--steps", "400", env={"TINY_STEP_SLEEP": "0.1"}, min_nodes=1, max_nodes=2)
    a = job.start_pod("pod-a")
    b = job.start_pod("pod-b")
    wait_for("3 steps at world 2", lambda: len([r for r in job.losses() if r["world_size"] == 2]) >= 3, timeout=240)
    killed_at = max(r["step"] for r in job.losses())
    job.kill_pod(b, signal.SIGKILL)
    wait_for(
        "the survivor trains alone",
        lambda: any(r["world_size"] == 1 and r["step"] > killed_at for r in job.losses()),
        timeout=240,
    )
    assert _status(a.dir).get("script_failures", 0) == 0
