"""The observed world as the core sees it: plain, immutable views of Nodes, worker Pods and a job's status.

Built from Kubernetes objects (dicts, as kopf and the API return them) by the ``from_body`` constructors; the
core never touches the API itself.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from spotrain_operator import wellknown as wk


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    ready_status: str = "True"  # True | False | Unknown
    ready_reason: str = ""
    ready_message: str = ""
    unschedulable: bool = False
    provider_id: str = ""
    deleting: bool = False

    @property
    def zone(self) -> str:
        return self.labels.get(wk.ZONE, "")

    def taint(self, key: str) -> Taint | None:
        for t in self.taints:
            if t.key == key:
                return t
        return None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeView:
        meta = body.get("metadata", {})
        spec = body.get("spec", {})
        conditions = (body.get("status") or {}).get("conditions") or []
        ready: Mapping[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        return cls(
            name=meta["name"],
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            taints=tuple(
                Taint(t["key"], t.get("value") or "", t.get("effect", "")) for t in spec.get("taints") or []
            ),
            ready=ready.get("status") == "True",
            ready_status=ready.get("status", "Unknown"),
            ready_reason=ready.get("reason", ""),
            ready_message=ready.get("message", ""),
            unschedulable=bool(spec.get("unschedulable")),
            provider_id=spec.get("providerID", ""),
            deleting=bool(meta.get("deletionTimestamp")),
        )


@dataclass(frozen=True)
class PodView:
    name: str
    role: str  # worker | rendezvous
    round: int
    pool: str
    zone: str
    node: str | None
    phase: str
    ready: bool
    deleting: bool
    created: datetime.datetime | None
    ip: str | None = None
    unschedulable_since: datetime.datetime | None = None
    disruption_reason: str | None = None  # DisruptionTarget condition reason
    exit_code: int | None = None
    termination_message: str = ""
    serial: int = 0

    @property
    def active(self) -> bool:
        """Counts toward the job's workers: not on its way out."""
        return not self.deleting and self.phase in ("Pending", "Running")

    @property
    def completed(self) -> bool:
        return '"completed"' in self.termination_message

    @property
    def final_checkpoint(self) -> dict[str, Any]:
        """The checkpoint a completed trainer names in its termination message (step, uri, time), if any."""
        try:
            message = json.loads(self.termination_message)
        except ValueError:
            return {}
        checkpoint = message.get("checkpoint") if isinstance(message, dict) else None
        return dict(checkpoint) if isinstance(checkpoint, dict) else {}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodView:
        meta = body.get("metadata", {})
        labels = meta.get("labels") or {}
        status = body.get("status", {}) or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        scheduled = conditions.get("PodScheduled", {})
        unschedulable_since = None
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            unschedulable_since = parse_time(scheduled.get("lastTransitionTime"))
        disruption = conditions.get("DisruptionTarget", {})
        exit_code, message = None, ""
        for cs in status.get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated:
                exit_code = terminated.get("exitCode")
                message = terminated.get("message") or ""
                break
        return cls(
            name=meta["name"],
            role=labels.get(wk.ROLE_LABEL, ""),
            round=int(labels.get(wk.ROUND_LABEL, 0)),
            pool=labels.get(wk.POOL_LABEL, ""),
            zone=(meta.get("annotations") or {}).get(wk.ZONE, ""),
            node=(body.get("spec") or {}).get("nodeName"),
            phase=status.get("phase", "Pending"),
            ready=conditions.get("Ready", {}).get("status") == "True",
            deleting=bool(meta.get("deletionTimestamp")),
            created=parse_time(meta.get("creationTimestamp")),
            ip=status.get("podIP"),
            unschedulable_since=unschedulable_since,
            disruption_reason=disruption.get("reason") if disruption.get("status") == "True" else None,
            exit_code=exit_code,
            termination_message=message,
            serial=int(labels.get(wk.SERIAL_LABEL, 0)),
        )


@dataclass(frozen=True)
class Drain:
    node: str
    source: str
    deadline: datetime.datetime
    request_id: str
    requested_at: datetime.datetime
    evicted: bool = False


@dataclass(frozen=True)
class JobStatus:
    """The part of a job's status the core reads back: the state that must survive an operator restart."""

    phase: str = ""
    round: int = 0
    serial: int = 0
    preemptions: int = 0
    failures: int = 0
    lost_steps: int = 0
    preemptions_by_pool: Mapping[str, int] = field(default_factory=dict)
    accounted: tuple[str, ...] = ()  # worker pods already counted as preempted, failed or completed
    cooldowns: Mapping[str, datetime.datetime] = field(default_factory=dict)  # "pool/zone" -> until
    pending_since: datetime.datetime | None = None
    scale_up_after: datetime.datetime | None = None
    start_time: datetime.datetime | None = None
    completion_time: datetime.datetime | None = None
    drains: Mapping[str, Drain] = field(default_factory=dict)
    last_checkpoint: Mapping[str, Any] = field(default_factory=dict)
    conditions: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_body(cls, status: Mapping[str, Any] | None) -> JobStatus:
        status = status or {}
        rendezvous = status.get("rendezvous") or {}
        drains = {}
        for node, d in (status.get("drains") or {}).items():
            deadline = parse_time(d.get("deadline"))
            requested = parse_time(d.get("requestedAt"))
            if deadline and requested:
                drains[node] = Drain(node, d.get("source", ""), deadline, d.get("requestID", ""), requested,
                                     bool(d.get("evicted")))
        return cls(
            phase=status.get("phase", ""),
            round=int(rendezvous.get("round", 0)),
            serial=int(status.get("podSerial", 0)),
            preemptions=int(status.get("preemptions", 0)),
            failures=int(status.get("failures", 0)),
            lost_steps=int(status.get("lostSteps", 0)),
            preemptions_by_pool=dict(status.get("preemptionsByPool") or {}),
            accounted=tuple(status.get("accountedPods") or ()),
            cooldowns={k: t for k, v in (status.get("cooldowns") or {}).items() if (t := parse_time(v))},
            pending_since=parse_time(status.get("pendingSince")),
            scale_up_after=parse_time(status.get("scaleUpAfter")),
            start_time=parse_time(status.get("startTime")),
            completion_time=parse_time(status.get("completionTime")),
            drains=drains,
            last_checkpoint=dict(status.get("lastCheckpoint") or {}),
            conditions=tuple(status.get("conditions") or ()),
        )

    def with_(self, **changes: Any) -> JobStatus:
        return replace(self, **changes)
