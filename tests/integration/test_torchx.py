"""`torchx run -s spotrain dist.ddp ...` against the devcluster: the CLI finds the scheduler through its entry
point and submits a SpotTrainingJob the API server accepts (schema and CEL); the operator places it and
`describe` shows the job running with its worker replicas; `list` finds it; `cancel` deletes it.

Logs are not read here: the devcluster's KWOK nodes serve no pod logs (`log_iter` reads them through the API
server's pods/log, which on a real cluster reaches the kubelet)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from torchx.specs import AppState

from spotrain_dev.testing import Harness, wait_for
from spotrain_operator.torchx_scheduler import SpotrainScheduler


def torchx(harness: Harness, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(harness.cluster.kubeconfig)}
    result = subprocess.run([str(Path(sys.executable).parent / "torchx"), *args], capture_output=True, text=True,
                            env=env, timeout=120, cwd=harness.tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_torchx_run_describe_list_cancel(harness: Harness) -> None:
    nodes = [harness.add_node("spot-cpu", zone) for zone in ("us-east-1a", "us-east-1b")]
    nodes.append(harness.add_node("on-demand", "us-east-1a"))
    harness.wait_nodes_ready(nodes)
    base = harness.tmp / "base.yaml"
    base.write_text(yaml.safe_dump(harness.job_manifest("base")))
    harness.start_operator()

    out = torchx(harness, "run", "-s", "spotrain", "-cfg", f"base={base},namespace={harness.namespace}",
                 "dist.ddp", "-j", "2:2x1", "--image", "spotrain-trainer:dev", "--script", "examples/train_tiny.py",
                 "--", "--steps", "5")
    handle = re.search(r"spotrain://[^/\s]*/(\S+)", out)
    assert handle, out
    app_id = handle.group(1)
    namespace, name = app_id.split(":")
    assert namespace == harness.namespace
    job = harness.job(name)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["examples/train_tiny.py", "--steps", "5"]
    assert (job["spec"]["elastic"]["minNodes"], job["spec"]["elastic"]["maxNodes"]) == (2, 2)

    scheduler = SpotrainScheduler("test", harness.api, harness.namespace)
    described = wait_for("the job running on 2 workers", lambda: (
        d if (d := scheduler.describe(app_id)) and d.state == AppState.RUNNING
        and len(d.roles_statuses[0].replicas) == 2 else None), timeout=120)
    assert described.roles[0].num_replicas == 2
    assert "RUNNING" in torchx(harness, "status", f"spotrain://torchx/{app_id}")
    assert app_id in {a.app_id for a in scheduler.list()}

    torchx(harness, "cancel", f"spotrain://torchx/{app_id}")
    wait_for("the job deleted", lambda: scheduler.describe(app_id) is None)
