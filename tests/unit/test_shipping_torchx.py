"""The spotrain TorchX scheduler: an AppDef from TorchX's own components (dist.ddp, utils.python) becomes a
SpotTrainingJob (pure translation), the job's status becomes TorchX's view of it, and registering the scheduler
keeps TorchX's built-in schedulers."""

from __future__ import annotations

import copy
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torchx.components.dist import ddp
from torchx.components.utils import python
from torchx.schedulers import DEFAULT_SCHEDULER_MODULES, get_default_scheduler_name, get_scheduler_factories
from torchx.specs import AppDef, AppState, Role

from spotrain_operator import torchx_scheduler as ts

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
IMAGE = "registry.example/team/llm:1"


def translate(app: AppDef, **cfg: Any) -> dict[str, Any]:
    return ts.app_to_job(app, BASE, "llm-abc123", "team-a", cfg)


def trainer(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_ddp_becomes_an_elastic_job_on_the_base_spot_pools() -> None:
    app = ddp("--lr", "0.1", "--name", "a b", script="train.py", j="2:8x4", image=IMAGE, cpu=4, memMB=8192,
              max_retries=2, env={"WANDB_PROJECT": "llm"})
    job = translate(app)
    assert job["metadata"] == {"name": "llm-abc123", "namespace": "team-a",
                               "labels": {ts.LABEL_APP_NAME: "train"}}
    assert job["spec"]["elastic"] == {**BASE["spec"]["elastic"], "minNodes": 2, "maxNodes": 8, "nprocPerNode": 4}
    container = trainer(job)
    assert container["image"] == IMAGE and container["command"] == ["spotrain-launch"]
    assert container["args"] == ["train.py", "--lr", "0.1", "--name", "a b"]
    assert {"name": "WANDB_PROJECT", "value": "llm"} in container["env"]
    assert container["resources"] == {"requests": {"cpu": "4000m", "memory": "8192M"}, "limits": {"memory": "8192M"}}
    assert "ports" not in container  # torchrun's c10d port: spotrain runs its own rendezvous
    assert job["spec"]["budgets"]["maxFailures"] == 2
    for kept in ("placement", "fallback", "checkpoint", "termination"):
        assert job["spec"][kept] == BASE["spec"][kept]


def test_module_roles_python_roles_and_overrides() -> None:
    job = translate(ddp("--epochs", "3", m="pkg.train", j="1:4x1", image=IMAGE), checkpoint_uri="s3://b/llm",
                    service_account="trainer")
    assert trainer(job)["args"] == ["-m", "pkg.train", "--epochs", "3"]
    assert job["spec"]["elastic"]["minNodes"] == 1 and job["spec"]["elastic"]["maxNodes"] == 4
    assert job["spec"]["checkpoint"]["uri"] == "s3://b/llm"
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "trainer"
    single = translate(python("--x", "1", script="eval.py", image=IMAGE))
    assert trainer(single)["args"] == ["eval.py", "--x", "1"]
    assert single["spec"]["elastic"]["minNodes"] == single["spec"]["elastic"]["maxNodes"] == 1


def test_macros_are_substituted_with_the_job_name() -> None:
    job = translate(ddp("--run", "${app_id}", script="train.py", j="2x1", image=IMAGE))
    assert trainer(job)["args"] == ["train.py", "--run", "llm-abc123"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1), max_size=6))
def test_script_arguments_survive_torchx_quoting(args: list[str]) -> None:
    """dist.ddp joins the torchrun command into one `bash -c` string; the script's arguments come back intact."""
    app = ddp(*args, script="train.py", j="2:3x1", image=IMAGE)
    role = app.roles[0]
    assert ts.parse_launch(role).script_args == ["train.py", *args]


@pytest.mark.parametrize(("app", "message"), [
    (AppDef("two", roles=[Role("a", IMAGE, entrypoint="python", args=["a.py"]),
                          Role("b", IMAGE, entrypoint="python", args=["b.py"])]), "has 2 roles"),
    (python(c="print(1)", image=IMAGE), "must be a torchrun command"),
    (AppDef("sh", roles=[Role("sh", IMAGE, entrypoint="/bin/run.sh", args=[])]), "must be a torchrun command"),
])
def test_apps_spotrain_cannot_run_are_refused_with_the_reason(app: AppDef, message: str) -> None:
    with pytest.raises(ts.TranslationError, match=message):
        translate(app)


def test_a_base_without_pools_or_checkpoint_is_refused() -> None:
    base = copy.deepcopy(BASE)
    del base["spec"]["placement"]
    with pytest.raises(ts.TranslationError, match=r"spec.placement"):
        ts.app_to_job(ddp(script="t.py", j="2x1", image=IMAGE), base, "n", "ns")


def test_job_names_are_unique_dns_labels() -> None:
    app = ddp(script="Train_Big.Model.py", j="2x1", image=IMAGE, name="/9-Run_Name")
    names = {ts.job_name(app) for _ in range(20)}
    assert len(names) == 20
    assert all(n[0].isalpha() and len(n) <= 40 and n == n.lower() for n in names)


def test_describe_maps_phases_workers_and_the_ready_message() -> None:
    job = translate(ddp(script="train.py", j="2:4x1", image=IMAGE))
    job["status"] = {"phase": "Rescaling", "preemptions": 3, "failures": 1,
                     "conditions": [{"type": "Ready", "status": "True", "message": "training on 2 nodes"}]}
    pods = [{"metadata": {"labels": {"spotrain.dev/serial": s}}, "status": {"phase": phase, "podIP": ip}}
            for s, phase, ip in (("7", "Pending", None), ("3", "Running", "10.0.0.3"))]
    described = ts.describe_job("team-a:llm-abc123", job, pods)
    assert described.state == AppState.RUNNING and described.num_restarts == 4
    assert described.msg == "training on 2 nodes"
    assert described.roles[0].num_replicas == 4 and described.roles[0].min_replicas == 2
    replicas = described.roles_statuses[0].replicas
    assert [(r.id, r.state, r.hostname) for r in replicas] == [(0, AppState.RUNNING, "10.0.0.3"),
                                                                (1, AppState.PENDING, "")]
    for phase, state in ts.PHASE_STATES.items():
        job["status"]["phase"] = phase
        assert ts.describe_job("a:b", job, []).state == state
    assert ts.describe_job("a:b", {**job, "status": None}, []).state == AppState.SUBMITTED


def test_registering_spotrain_keeps_torchx_builtin_schedulers() -> None:
    factories = get_scheduler_factories()
    assert set(factories) == {*DEFAULT_SCHEDULER_MODULES, "spotrain"}
    registered = {ep.name: ep.value for ep in entry_points(group="torchx.schedulers")}
    for name, module in DEFAULT_SCHEDULER_MODULES.items():
        assert registered[name] == f"{module}:create_scheduler"
    # Sorted by name in the installed metadata: the CLI's default is the first (docs/operations.md, TorchX).
    assert get_default_scheduler_name() == min(factories)
    scheduler = factories["spotrain"]("session")
    assert isinstance(scheduler, ts.SpotrainScheduler) and scheduler.backend == "spotrain"
    assert {"base", "namespace", "checkpoint_uri", "service_account"} <= set(scheduler.run_opts()._opts)
