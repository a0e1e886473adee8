"""Builders of observed worlds for tests of the pure core (``spotrain_operator.core``): a job spec from the
quickstart example with changes, nodes, worker and store pods, and an ``Observed`` around them."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from spotrain_operator import wellknown as wk
from spotrain_operator.api import JobSpec, parse_spec
from spotrain_operator.core import actions as act
from spotrain_operator.core.model import JobStatus, NodeView, PodView, Taint
from spotrain_operator.core.pods import JobRef
from spotrain_operator.core.reconcile import Decision, Observed
from spotrain_protocol import TrainerStatus

NOW = datetime.datetime(2026, 1, 1, 8, 0, 0, tzinfo=datetime.UTC)
QUICKSTART = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml").read_text())
JOB = JobRef("job", "ns", "0123456789abcdef")
ALL_SOURCES = frozenset(["nodeTerminationHandler", "karpenter", "gke", "aks", "clusterAutoscaler", "agent",
                         "awsQueue", "nodeHealth", "podDisruption"])


def spec(**changes: Any) -> JobSpec:
    raw = copy.deepcopy(QUICKSTART["spec"])
    for path, value in changes.items():
        target = raw
        keys = path.split("__")
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return parse_spec(raw)


def node(name: str, pool: str, zone: str, *, ready: bool = True, taints: tuple[Taint, ...] = (),
         labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> NodeView:
    selector = {"spot-cpu": {"karpenter.sh/nodepool": "spot-cpu"},
                "gke-spot": {"cloud.google.com/gke-nodepool": "gke-spot"},
                "on-demand": {"karpenter.sh/nodepool": "on-demand"}}[pool]
    return NodeView(name, {**selector, wk.ZONE: zone, **(labels or {})}, annotations or {}, taints, ready,
                    "True" if ready else "Unknown")


def worker(name: str, pool: str, zone: str, node_name: str | None, *, phase: str = "Running", round_: int = 1,
           serial: int = 1, ip: str | None = "127.16.0.1", **extra: Any) -> PodView:
    return PodView(name=name, role="worker", round=round_, pool=pool, zone=zone, node=node_name, phase=phase,
                   ready=phase == "Running", deleting=False, created=NOW, ip=ip, serial=serial, **extra)


def store(node_name: str = "od-a", round_: int = 1) -> PodView:
    return PodView(name=f"job-rdzv-g{round_}", role="rendezvous", round=round_, pool="on-demand", zone="us-east-1a",
                   node=node_name, phase="Running", ready=True, deleting=False, created=NOW)


def observe(spec_: Any, pods: list[PodView], nodes: list[NodeView], status: JobStatus | None = None,
            now: datetime.datetime = NOW, trainers: Mapping[str, TrainerStatus | None] | None = None) -> Observed:
    return Observed(JOB, 1, spec_, status or JobStatus(round=1, serial=10), pods, {n.name: n for n in nodes}, now,
                    trainers or {})


def created(decision: Decision) -> list[dict[str, Any]]:
    return [a.manifest for a in decision.actions if isinstance(a, act.CreatePod)
            and a.manifest["metadata"]["labels"][wk.ROLE_LABEL] == "worker"]


def base_nodes() -> list[NodeView]:
    return [node(f"s-{z}", "spot-cpu", z) for z in ("a", "b", "c")] + [node("od-a", "on-demand", "a")]
