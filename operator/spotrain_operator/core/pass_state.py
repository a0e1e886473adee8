"""What one reconcile pass works on: the observed world (:class:`Observed`), the status it carries forward, and
the helpers every decision shares (events, conditions, removing a pod, the job's workers and store, a node's notice
and drain). Each concern's decisions live in their own module and extend :class:`PassState`."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spotrain_operator.api import JobSpec
from spotrain_operator.core import actions as act
from spotrain_operator.core import placement
from spotrain_operator.core.model import Drain, JobStatus, NodeView, PodView, format_time
from spotrain_operator.core.network import NetworkPolicyConfig
from spotrain_operator.core.pods import (
    JobRef,
)
from spotrain_operator.core.termination import TerminationNotice, node_notice, pod_notice
from spotrain_protocol import TrainerStatus

ACCOUNTED_KEPT = 100
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Observed:
    job: JobRef
    generation: int
    spec: JobSpec
    status: JobStatus
    pods: Sequence[PodView]
    nodes: Mapping[str, NodeView]
    now: datetime.datetime
    # Control endpoints probed this time (None: unreachable); pods not probed are absent.
    trainers: Mapping[str, TrainerStatus | None] = field(default_factory=dict)
    # Autoscaling (placement): Karpenter NodePools by name, and each node's room (allocatable minus the requests of
    # all pods on it); a node absent from node_room counts as free when no worker of this job is on it.
    node_pools: Mapping[str, placement.NodePoolView] = field(default_factory=dict)
    node_room: Mapping[str, placement.NodeRoom] = field(default_factory=dict)
    # Actions of the previous pass that the API refused (a 422, a quota, a webhook): reported on the job.
    refused: tuple[str, ...] = ()
    # Pending workers and probes whose (pool, zone) the autoscaler reports it cannot serve, with its words
    # (provisioning.pods_karpenter_cannot_serve): re-placed at once, not after the provisioning timeout.
    unservable: Mapping[str, str] = field(default_factory=dict)
    # The job's NetworkPolicy (core/network.py): what it must admit (None: the operator makes none), and the spec hash
    # on the one in the cluster (None: there is none).
    network_policy: NetworkPolicyConfig | None = None
    network_policy_hash: str | None = None



def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
                   now: datetime.datetime, generation: int) -> None:
    """metav1.Condition semantics: lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    for c in conditions:
        if c["type"] == type_:
            if c.get("status") != value or not c.get("lastTransitionTime"):
                c["lastTransitionTime"] = format_time(now)
            c.update(status=value, reason=reason, message=message, observedGeneration=generation)
            return
    conditions.append({"type": type_, "status": value, "reason": reason, "message": message,
                       "lastTransitionTime": format_time(now), "observedGeneration": generation})



class PassState:
    def __init__(self, o: Observed):
        self.o = o
        self.spec = o.spec
        self.now = o.now
        self.actions: list[act.Action] = []
        s = o.status
        self.round = s.round
        self.moving_from = s.moving_from
        self.move_started = s.move_started
        self.serial = s.serial
        self.preemptions = s.preemptions
        self.failures = s.failures
        self.preemptions_by_pool = Counter(s.preemptions_by_pool)
        self.accounted = list(s.accounted)
        self.cooldowns = {k: v for k, v in s.cooldowns.items() if v > o.now}
        self.pending_since = s.pending_since
        self.scale_up_after = s.scale_up_after
        self.start_time = s.start_time
        self.completion_time = s.completion_time
        self.drains: dict[str, Drain] = dict(s.drains)
        self.last_checkpoint = dict(s.last_checkpoint)
        self.conditions = [dict(c) for c in s.conditions]
        self.phase = s.phase or "Pending"
        self.removed: set[str] = set()  # pods this reconcile deletes or evicts
        self.lost_steps = 0
        self.message = ""
        self.store_move: str | None = None  # why the rendezvous store moves this pass (a drain of its node is due)
        self.errors: list[str] = []
        self.script_failures = dict(s.script_failures)
        self.last_error = s.last_error

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.actions.append(act.Event("Warning" if warning else "Normal", reason, message))

    def condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        set_condition(self.conditions, type_, status, reason, message, self.now, self.o.generation)

    def remove(self, pod: PodView, reason: str, grace: int | None = None) -> None:
        """Deletes a pod for ``reason`` (recorded on the pod). A worker the operator removes is accounted for at once:
        its exit, whatever the code, is neither a failure nor a preemption. A pod already terminating is deleted
        again only to cut its grace to 0 (nothing is left to wait for)."""
        if pod.name in self.removed or (pod.deleting and (grace != 0 or pod.deletion_grace == 0)):
            return
        self.removed.add(pod.name)
        if pod.role == "worker" and pod.name not in self.accounted:
            self.account(pod)
        self.actions.append(act.DeletePod(pod.name, reason, grace))

    def account(self, pod: PodView) -> None:
        self.accounted.append(pod.name)

    def workers(self) -> list[PodView]:
        return [p for p in self.o.pods if p.role == "worker"]

    def live_workers(self) -> list[PodView]:
        """The job's workers: those of the current round, and those re-joining it after a planned store move."""
        return [w for w in self.workers() if w.active and w.name not in self.removed
                and w.round in (self.round, self.moving_from or self.round)]

    def rejoining_workers(self) -> list[PodView]:
        """Workers of the round a planned store move left, not yet on the new store."""
        return [w for w in self.live_workers() if self.moving_from and w.round == self.moving_from]

    def current_store(self) -> PodView | None:
        return next((p for p in self.o.pods if p.role == "rendezvous" and p.round == self.round and self.round > 0
                     and p.active and p.name not in self.removed and self._node_ok(p) and not self._stranded(p)),
                    None)

    def _stranded(self, store: PodView) -> bool:
        """A store pinned to a zone that lost every node of its pool while it waited to be scheduled (a zone lost
        as the store was being replaced) would wait forever: it counts as lost, and a new one goes elsewhere."""
        if store.node or not store.unschedulable_since or store.zone == "":
            return False
        pool = self.spec.pool(self.spec.rendezvous_pool_name)
        tolerations = placement.pool_tolerations(self.spec, pool)
        return not any(n.zone == store.zone and pool.matches(dict(n.labels)) and placement.node_accepts(n, tolerations)
                       for n in self.o.nodes.values())

    def _node_ok(self, pod: PodView) -> bool:
        if pod.node is None:
            return True
        node = self.o.nodes.get(pod.node)
        return node is not None and node.ready and not node.deleting

    def record_preemption(self, pod: PodView, why: str) -> None:
        if pod.name in self.accounted:
            return
        self.account(pod)
        self.preemptions += 1
        key = placement.cooldown_key(pod.pool, pod.zone)
        self.preemptions_by_pool[key] += 1
        self.cooldowns[key] = self.now + datetime.timedelta(seconds=self.spec.cooldown_seconds)
        self.event("WorkerPreempted", f"worker {pod.name} on {pod.node} ({key}) lost: {why}; "
                   f"{key} avoided until {format_time(self.cooldowns[key])}", warning=True)

    def notice_for(self, pod: PodView, node: NodeView | None) -> TerminationNotice | None:
        term = self.spec.termination
        return ((node and node_notice(node, self.now, term.sources, term.proactive_on_rebalance))
                or pod_notice(pod, self.now, term.sources))

    def drain_of(self, node_name: str | None) -> Drain | None:
        """The drain of this very node (by UID: a new node that reuses the name is not being drained)."""
        drain = self.drains.get(node_name or "")
        if drain is None:
            return None
        node = self.o.nodes.get(drain.node)
        return drain if node is None or drain.concerns(node) else None

    def step(self, name: str, run: Callable[[], object]) -> None:
        """Runs one step; an exception (a spec value no check foresaw, a corner of the world nobody expected) is
        reported on the job and the other steps still run: a bug in scaling must never stop a drain."""
        try:
            run()
        except Exception as e:  # reported on the job (report_errors), never swallowed
            self.errors.append(f"{name}: {type(e).__name__}: {e}")
