"""What the core asks the shell to do. Each action is idempotent to apply: creating what exists, deleting what
is gone or evicting what is already terminating is a no-op, so a reconcile may be repeated safely."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CreatePod:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class EnsureObject:
    """An object the job owns besides its pods (the rendezvous Service and PDB, the control Secret, the
    NetworkPolicy): created, or brought up to date where it exists (cluster.create says what is patched)."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeletePod:
    name: str
    reason: str  # recorded on the pod (deletion-reason annotation) before it goes
    grace_seconds: int | None = None


@dataclass(frozen=True)
class EvictPod:
    name: str
    grace_seconds: int
    outcome: str = ""  # why now: durable | unreachable | deadline (metrics.DRAIN_OUTCOMES)
    requested_at: datetime.datetime | None = None  # when the checkpoint was requested, for notice-to-drain


@dataclass(frozen=True)
class RequestCheckpoint:
    request_id: str
    reason: str
    deadline: str
    pod_ips: tuple[tuple[str, str], ...]  # (pod name, pod IP)


@dataclass(frozen=True)
class MoveRendezvous:
    """Tells workers that the rendezvous store moved (spotrain_protocol.RendezvousMove): their agents re-join the
    new store's round in the same pods."""

    rendezvous_id: str
    endpoint: str
    round: int
    pod_ips: tuple[tuple[str, str], ...]  # (pod name, pod IP)


@dataclass(frozen=True)
class LabelPod:
    """Sets labels on a pod (a worker that re-joined a moved store takes the new round's label)."""

    name: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MarkNodeDrained:
    node: str


@dataclass(frozen=True)
class DeleteJob:
    pass


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


Action = (CreatePod | EnsureObject | DeletePod | EvictPod | RequestCheckpoint | MoveRendezvous | LabelPod
          | MarkNodeDrained | DeleteJob | Event)
