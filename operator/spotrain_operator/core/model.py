"""The observed world as the core sees it: plain, immutable views of Nodes, worker Pods and a job's status.

Built from Kubernetes objects (dicts, as kopf and the API return them) by the ``from_body`` constructors; the
core never touches the API itself.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from spotrain_operator import wellknown as wk
from spotrain_protocol import CompletionRecord


def parse_time(value: Any) -> datetime.datetime | None:
    """An RFC 3339 time as written by Kubernetes and by people; None for anything else. A time without a zone is
    taken as UTC (comparing it with the aware times around it would raise), and a year past 9998 is refused so that
    adding a duration to it cannot overflow."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.year > 9998:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


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
    uid: str = ""

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
            uid=meta.get("uid", ""),
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
    deletion_reason: str = ""  # why the operator removed it (wk.DELETION_REASON_ANNOTATION)
    deletion_grace: int | None = None  # metadata.deletionGracePeriodSeconds once deleting

    @property
    def active(self) -> bool:
        """Counts toward the job's workers: not on its way out."""
        return not self.deleting and self.phase in ("Pending", "Running")

    @property
    def completion_record(self) -> CompletionRecord | None:
        """The trainer's completion record when the termination message is exactly one; a crash log that merely
        mentions "completed" is not one."""
        return CompletionRecord.from_message(self.termination_message)

    @property
    def completed(self) -> bool:
        return self.completion_record is not None

    @property
    def final_checkpoint(self) -> dict[str, Any]:
        """The checkpoint a completed trainer names in its termination message (step, uri, time), if any."""
        record = self.completion_record
        return asdict(record.checkpoint) if record is not None and record.checkpoint is not None else {}

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
            round=_int(labels.get(wk.ROUND_LABEL)),
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
            serial=_int(labels.get(wk.SERIAL_LABEL)),
            deletion_reason=(meta.get("annotations") or {}).get(wk.DELETION_REASON_ANNOTATION, ""),
            deletion_grace=meta.get("deletionGracePeriodSeconds"),
        )


@dataclass(frozen=True)
class Drain:
    """A drain in flight: a notice for one node, the checkpoint requested for it, and when the node goes.

    Keyed by node name *and* UID: clouds reuse node names (EKS and Karpenter name nodes by private IP), and a drain
    of the old node must neither hide a notice for the new one nor turn a crash on it into a preemption. Whether the
    doomed worker was evicted is not remembered: it is observed on the pod, so an eviction that failed is sent again.
    """

    node: str
    source: str
    deadline: datetime.datetime
    request_id: str
    requested_at: datetime.datetime
    node_uid: str = ""

    def concerns(self, node: NodeView | None) -> bool:
        """True for the node this drain was started for (a node of the same name but another UID is a new node)."""
        return node is not None and node.name == self.node and (not self.node_uid or node.uid == self.node_uid)

    def to_body(self) -> dict[str, Any]:
        return {"nodeUID": self.node_uid, "source": self.source, "deadline": format_time(self.deadline),
                "requestID": self.request_id, "requestedAt": format_time(self.requested_at)}

    @classmethod
    def from_body(cls, node: str, body: Mapping[str, Any]) -> Drain | None:
        deadline, requested = parse_time(body.get("deadline")), parse_time(body.get("requestedAt"))
        if deadline is None or requested is None:
            return None
        return cls(node, str(body.get("source", "")), deadline, str(body.get("requestID", "")), requested,
                   str(body.get("nodeUID", "")))


def _times(value: Any) -> dict[str, datetime.datetime]:
    return {str(k): t for k, v in (value or {}).items() if (t := parse_time(v))}


@dataclass(frozen=True)
class JobStatus:
    """A job's whole status: what the operator must remember across restarts (round, serials, counted pods,
    cooldowns, timers, drains) and what it reports (phase, conditions, counts, cost).

    ``from_body`` and ``to_body`` are the one place the status is parsed and written, and they round-trip. The
    operator replaces the status as a whole with the resourceVersion it read (optimistic concurrency), so a key
    this value no longer holds (a finished drain, an expired cooldown) is really removed from the stored object.
    """

    phase: str = ""
    observed_generation: int = 0
    conditions: tuple[Mapping[str, Any], ...] = ()
    round: int = 0
    rendezvous_endpoint: str = ""
    rendezvous_id: str = ""
    # A planned store move in progress: the round whose workers re-join the new store in their own pods, and since
    # when (0 / None: none).
    moving_from: int = 0
    move_started: datetime.datetime | None = None
    serial: int = 0
    preemptions: int = 0
    failures: int = 0
    lost_steps: int = 0
    preemptions_by_pool: Mapping[str, int] = field(default_factory=dict)
    accounted: tuple[str, ...] = ()  # worker pods already counted as preempted, failed, completed or removed
    cooldowns: Mapping[str, datetime.datetime] = field(default_factory=dict)  # "pool/zone" -> until
    pending_since: datetime.datetime | None = None
    scale_up_after: datetime.datetime | None = None
    start_time: datetime.datetime | None = None
    completion_time: datetime.datetime | None = None
    drains: Mapping[str, Drain] = field(default_factory=dict)
    last_checkpoint: Mapping[str, Any] = field(default_factory=dict)
    script_failures: Mapping[str, int] = field(default_factory=dict)  # pod -> script crashes it reported
    last_error: str = ""  # the training script's last reported error
    # Reported only: derived from the observed pods on every pass.
    selector: str = ""
    ready_workers: int = 0
    desired_workers: int = 0
    world_size: int = 0
    workers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    cost: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, status: Mapping[str, Any] | None) -> JobStatus:
        status = status or {}
        rendezvous = status.get("rendezvous") or {}
        drains = {}
        for node, body in (status.get("drains") or {}).items():
            if isinstance(body, Mapping) and (drain := Drain.from_body(node, body)):
                drains[node] = drain
        return cls(
            phase=str(status.get("phase", "")),
            observed_generation=_int(status.get("observedGeneration")),
            conditions=tuple(dict(c) for c in status.get("conditions") or () if isinstance(c, Mapping)),
            round=_int(rendezvous.get("round")),
            rendezvous_endpoint=str(rendezvous.get("endpoint", "")),
            rendezvous_id=str(rendezvous.get("id", "")),
            moving_from=_int(rendezvous.get("movingFrom")),
            move_started=parse_time(rendezvous.get("moveStarted")),
            serial=_int(status.get("podSerial")),
            preemptions=_int(status.get("preemptions")),
            failures=_int(status.get("failures")),
            lost_steps=_int(status.get("lostSteps")),
            preemptions_by_pool={str(k): _int(v) for k, v in (status.get("preemptionsByPool") or {}).items()},
            accounted=tuple(str(p) for p in status.get("accountedPods") or ()),
            cooldowns=_times(status.get("cooldowns")),
            pending_since=parse_time(status.get("pendingSince")),
            scale_up_after=parse_time(status.get("scaleUpAfter")),
            start_time=parse_time(status.get("startTime")),
            completion_time=parse_time(status.get("completionTime")),
            drains=drains,
            last_checkpoint=dict(status.get("lastCheckpoint") or {}),
            script_failures={str(k): _int(v) for k, v in (status.get("scriptFailures") or {}).items()},
            last_error=str(status.get("lastError") or ""),
            selector=str(status.get("selector", "")),
            ready_workers=_int(status.get("readyWorkers")),
            desired_workers=_int(status.get("desiredWorkers")),
            world_size=_int(status.get("worldSize")),
            workers={str(k): {str(a): _int(b) for a, b in (v or {}).items()}
                     for k, v in (status.get("workers") or {}).items()},
            cost=dict(status.get("cost") or {}),
        )

    def to_body(self) -> dict[str, Any]:
        """The status as stored; keys without a value are left out (and so removed by a replace)."""
        body: dict[str, Any] = {
            "phase": self.phase or None,
            "observedGeneration": self.observed_generation,
            "conditions": [dict(c) for c in self.conditions],
            "selector": self.selector or None,
            "readyWorkers": self.ready_workers,
            "desiredWorkers": self.desired_workers,
            "workersSummary": f"{self.ready_workers}/{self.desired_workers}",
            "worldSize": self.world_size,
            "workers": {k: dict(v) for k, v in self.workers.items()},
            "preemptions": self.preemptions,
            "preemptionsByPool": dict(self.preemptions_by_pool),
            "failures": self.failures,
            "lostSteps": self.lost_steps,
            "podSerial": self.serial,
            "accountedPods": list(self.accounted),
            "rendezvous": {"endpoint": self.rendezvous_endpoint, "id": self.rendezvous_id, "round": self.round,
                           **({"movingFrom": self.moving_from, "moveStarted": format_time(self.move_started)}
                              if self.moving_from and self.move_started else {})},
            "cooldowns": {k: format_time(v) for k, v in sorted(self.cooldowns.items())},
            "drains": {n: d.to_body() for n, d in sorted(self.drains.items())},
            "cost": dict(self.cost),
            "lastCheckpoint": dict(self.last_checkpoint) or None,
            "scriptFailures": dict(self.script_failures) or None,
            "lastError": self.last_error or None,
            "pendingSince": self.pending_since,
            "scaleUpAfter": self.scale_up_after,
            "startTime": self.start_time,
            "completionTime": self.completion_time,
        }
        return {k: format_time(v) if isinstance(v, datetime.datetime) else v for k, v in body.items() if v is not None}

    @property
    def awaiting_trainers(self) -> bool:
        """A drain waits on the workers' checkpoint, or a store move on the workers re-joining: no Kubernetes event
        announces either, so the operator reads the control endpoints and polls closely."""
        return bool(self.drains or self.moving_from)

    def with_(self, **changes: Any) -> JobStatus:
        return replace(self, **changes)
