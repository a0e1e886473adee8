"""The Argo CD health check and resource actions of SpotTrainingJob (charts/spotrain/files/argocd), run with Lua
5.1 (lupa; Argo CD's gopher-lua is Lua 5.1) against statuses recorded from the operator's own core for every
phase it writes, and the argocd-cm snippet in docs/operations.md checked to carry exactly these scripts."""

from __future__ import annotations

import copy
import datetime
import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spotrain_operator import wellknown as wk
from spotrain_operator.api import parse_spec
from spotrain_operator.core.model import JobStatus, NodeView, PodView
from spotrain_operator.core.pods import JobRef
from spotrain_operator.core.reconcile import Observed, decide

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "charts" / "spotrain" / "files" / "argocd" / "spotrain.dev" / "SpotTrainingJob"
QUICKSTART = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
NOW = datetime.datetime(2026, 1, 1, 8, 0, tzinfo=datetime.UTC)
JOB = JobRef("llm", "team-a", "0123456789abcdef")


LUA = lua51.LuaRuntime(unpack_returned_tuples=True)


@functools.cache
def _compiled(script: Path) -> Any:
    """The script as a Lua function of no arguments (Argo CD runs it as a chunk reading the global `obj`)."""
    return LUA.execute(f"return function()\n{script.read_text()}\nend")


def run_lua(script: Path, obj: dict[str, Any]) -> Any:
    """Runs a script the way Argo CD does: the object as the global `obj` (JSON nulls absent), the script's
    return value converted back."""
    LUA.globals().obj = LUA.table_from(json.loads(json.dumps(obj)), recursive=True)
    return _to_python(_compiled(script)())


def _to_python(value: Any) -> Any:
    if lua51.lua_type(value) == "table":
        return {k: _to_python(v) for k, v in value.items()}
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    result = run_lua(SCRIPTS / "health.lua", obj)
    return result["status"], result["message"]


# -- statuses recorded from core.reconcile.decide ---------------------------------------------------------


def _spec(**elastic: int) -> dict[str, Any]:
    raw = copy.deepcopy(QUICKSTART["spec"])
    raw["elastic"].update(elastic)
    return raw


def _node(name: str, pool: str, zone: str) -> NodeView:
    return NodeView(name, {"karpenter.sh/nodepool": pool, wk.ZONE: zone}, {}, (), True, "True")


NODES = {n.name: n for n in [_node(f"s-{z}", "spot-cpu", z) for z in "abc"] + [_node("od-a", "on-demand", "a")]}


def _worker(name: str, zone: str, phase: str = "Running", serial: int = 1, **extra: Any) -> PodView:
    return PodView(name=name, role="worker", round=1, pool="spot-cpu", zone=zone, node=f"s-{zone}", phase=phase,
                   ready=phase == "Running", deleting=False, created=NOW, ip="10.0.0.1", serial=serial, **extra)


STORE = PodView(name="llm-rdzv-g1", role="rendezvous", round=1, pool="on-demand", zone="a", node="od-a",
                phase="Running", ready=True, deleting=False, created=NOW)


def recorded(raw_spec: dict[str, Any], pods: list[PodView], status: dict[str, Any] | None,
             generation: int = 1) -> dict[str, Any]:
    observed = Observed(JOB, generation, parse_spec(raw_spec), JobStatus.from_body(status), pods, NODES, NOW, {})
    decision = decide(observed)
    return {"apiVersion": f"{wk.GROUP}/{wk.VERSION}", "kind": "SpotTrainingJob",
            "metadata": {"name": JOB.name, "namespace": JOB.namespace, "generation": generation},
            "spec": raw_spec, "status": json.loads(json.dumps(decision.status))}


STARTED = {"rendezvous": {"round": 1}, "podSerial": 10, "startTime": "2026-01-01T07:00:00Z"}


def every_phase() -> dict[str, dict[str, Any]]:
    three = [STORE, *(_worker(f"w{i}", z, serial=i) for i, z in enumerate("abc"))]
    completed = json.dumps({"spotrain": "completed", "step": 500})
    return {
        "Pending": recorded(_spec(), [], None),
        "Running": recorded(_spec(maxNodes=3), three, STARTED),
        "Rescaling": recorded(_spec(maxNodes=3), [*three[:3], _worker("w2", "c", phase="Pending", serial=2)],
                              STARTED),
        "Waiting": recorded(_spec(minNodes=3, maxNodes=3), three[:2], STARTED),
        "Suspended": recorded({**_spec(maxNodes=3), "suspend": True}, three, STARTED),
        "Succeeded": recorded(_spec(maxNodes=3), [STORE, _worker("w0", "a", phase="Succeeded", exit_code=0,
                                                                 termination_message=completed)], STARTED),
        "Failed": recorded({**_spec(maxNodes=3), "budgets": {"maxFailures": 0}},
                           [STORE, _worker("w0", "a", phase="Failed", exit_code=1)], STARTED),
    }


PHASES = every_phase()


def test_every_phase_the_operator_writes_is_recorded() -> None:
    assert {name: obj["status"]["phase"] for name, obj in PHASES.items()} == {name: name for name in PHASES}


@pytest.mark.parametrize(("phase", "expected", "message"), [
    ("Pending", "Progressing", r"^0 of at least 2 workers ready$"),
    ("Running", "Healthy", r"^training on 3 nodes$"),
    ("Rescaling", "Healthy", r"^training on 2 nodes; rescaling$"),
    ("Waiting", "Degraded", r"^1 of at least 3 workers ready$"),
    ("Suspended", "Suspended", r"^Suspended \(spec.suspend\)"),
    ("Succeeded", "Healthy", r"^the trainer reported that training completed$"),
    ("Failed", "Degraded", r"^1 worker failures exceed spec.budgets.maxFailures=0$"),
])
def test_health_of_every_phase(phase: str, expected: str, message: str) -> None:
    status, text = health(PHASES[phase])
    assert status == expected
    assert re.search(message, text), text


def test_a_new_job_without_status_is_progressing() -> None:
    obj = {k: v for k, v in PHASES["Running"].items() if k != "status"}
    assert health(obj)[0] == "Progressing"


def test_an_invalid_spec_is_degraded_with_the_operators_message() -> None:
    obj = copy.deepcopy(PHASES["Running"])
    # the condition as controllers/jobs.py writes it for a spec the schema let through
    obj["status"]["conditions"].append({
        "type": "SpecInvalid", "status": "True", "reason": "InvalidSpec", "observedGeneration": 1,
        "message": "spec.placement.pricingConfigMap: ConfigMap 'prices' does not exist",
        "lastTransitionTime": "2026-01-01T08:00:00Z"})
    assert health(obj) == ("Degraded", "Invalid spec: spec.placement.pricingConfigMap: ConfigMap 'prices' does "
                                       "not exist")


def test_an_unobserved_generation_is_progressing_and_suspend_resume_transitions_too() -> None:
    edited = copy.deepcopy(PHASES["Running"])
    edited["metadata"]["generation"] = 2
    assert health(edited) == ("Progressing", "Waiting for the operator to apply generation 2 (observed 1)")
    suspending = copy.deepcopy(PHASES["Running"])
    suspending["spec"]["suspend"] = True
    assert health(suspending)[0] == "Progressing"
    resuming = copy.deepcopy(PHASES["Suspended"])
    resuming["spec"]["suspend"] = False
    assert health(resuming) == ("Progressing", "Resuming from the last checkpoint")


CONDITION_TYPES = ["Ready", "Waiting", "Checkpointing", "FallbackActive", "SpecInvalid", "Succeeded", "Failed"]
condition = st.fixed_dictionaries({"status": st.sampled_from(["True", "True", "False", "Unknown"])},
                                  optional={"message": st.text(max_size=30), "reason": st.text(max_size=10)})
# Each condition type at most once (as metav1.Conditions are), any of them missing, with or without a message.
conditions = st.fixed_dictionaries({}, optional={t: condition for t in CONDITION_TYPES}).map(
    lambda by_type: [{"type": t, **c} for t, c in by_type.items()])
statuses = st.fixed_dictionaries({}, optional={
    "phase": st.one_of(st.sampled_from([*PHASES, ""]), st.sampled_from([*PHASES]), st.text(max_size=12)),
    "observedGeneration": st.integers(0, 5),
    "conditions": conditions,
})


@settings(max_examples=600, deadline=None)
@given(statuses, st.integers(1, 5), st.one_of(st.none(), st.booleans()))
@example({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"},
                                             {"type": "Checkpointing", "status": "True"}]}, 1, None)
def test_health_always_answers_a_known_status_with_a_message(status: dict[str, Any], generation: int,
                                                              suspend: bool | None) -> None:
    """Whatever an operator version or a hand edit leaves in status, the check answers (a Lua error would show
    the job's health as unknown in Argo CD, with the script's stack trace)."""
    obj: dict[str, Any] = {"metadata": {"name": "j", "generation": generation}, "spec": {}, "status": status}
    if suspend is not None:
        obj["spec"]["suspend"] = suspend
    state, message = health(obj)
    assert state in {"Healthy", "Progressing", "Degraded", "Suspended", "Unknown"}
    assert isinstance(message, str) and message


def test_suspend_and_resume_actions() -> None:
    actions = SCRIPTS / "actions"
    running = PHASES["Running"]
    assert run_lua(actions / "discovery.lua", running) == {"suspend": {"disabled": False},
                                                            "resume": {"disabled": True}}
    suspended = run_lua(actions / "suspend" / "action.lua", running)
    assert suspended["spec"]["suspend"] is True
    assert {k: v for k, v in suspended["spec"].items() if k != "suspend"} == _drop_lists(running["spec"])
    assert run_lua(actions / "discovery.lua", suspended) == {"suspend": {"disabled": True},
                                                              "resume": {"disabled": False}}
    assert run_lua(actions / "resume" / "action.lua", suspended)["spec"]["suspend"] is False


def _drop_lists(value: Any) -> Any:
    """A Lua array comes back from lupa as a table keyed 1..n: compare it that way."""
    if isinstance(value, dict):
        return {k: _drop_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return {i + 1: _drop_lists(v) for i, v in enumerate(value)}
    return value


def test_argocd_cm_snippet_carries_exactly_these_scripts() -> None:
    snippet = (REPO / "charts" / "spotrain" / "files" / "argocd" / "argocd-cm.yaml").read_text()
    data = yaml.safe_load(snippet)["data"]
    assert data["resource.customizations.health.spotrain.dev_SpotTrainingJob"] == (SCRIPTS / "health.lua").read_text()
    actions = yaml.safe_load(data["resource.customizations.actions.spotrain.dev_SpotTrainingJob"])
    assert actions["discovery.lua"] == (SCRIPTS / "actions" / "discovery.lua").read_text()
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
        name: (SCRIPTS / "actions" / name / "action.lua").read_text() for name in ("suspend", "resume")}
    generator = REPO / "charts" / "spotrain" / "hack" / "generate_argocd_cm.py"
    check = subprocess.run([sys.executable, str(generator), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr  # argocd-cm.yaml and its copy in docs/operations.md
