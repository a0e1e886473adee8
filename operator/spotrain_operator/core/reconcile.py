"""One reconcile of a SpotTrainingJob: the observed world in, actions and the new status out.

Level-triggered and idempotent: everything it needs to remember (round, pod serial, counted pods, cooldowns,
drains, timers) lives in the job's status, so an operator restarted at any point continues from the cluster. What
was done is read back from the cluster, not remembered: a drain does not record that its eviction was sent, it sees
the doomed pod terminating, so an eviction the API refused is simply sent again on the next pass.
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spotrain_operator.api import JobSpec
from spotrain_operator.core import actions as act
from spotrain_operator.core import placement
from spotrain_operator.core.model import Drain, JobStatus, NodeView, PodView, format_time
from spotrain_operator.core.network import SPEC_HASH_ANNOTATION, NetworkPolicyConfig, render_network_policy
from spotrain_operator.core.pods import (
    JobRef,
    render_control_secret,
    render_rendezvous,
    render_rendezvous_service,
    render_worker,
    selector,
)
from spotrain_operator.core.provisioning import PROBE_ROLE, render_probe, render_rendezvous_pdb
from spotrain_operator.core.termination import TerminationNotice, node_notice, pod_notice
from spotrain_operator.wellknown import ROLE_LABEL, ROUND_LABEL
from spotrain_protocol import TrainerStatus

ACCOUNTED_KEPT = 100
TERMINAL = ("Succeeded", "Failed")
# A rendezvous store whose node is cordoned, or whose pool left the spec, moves without a cloud deadline: this bounds
# how long the move waits for the workers' checkpoint before it goes ahead anyway.
STORE_MOVE_DEADLINE = datetime.timedelta(minutes=5)
# How long the workers of a moved store have to re-join the new one in their own pods (their agents restart the
# worker processes, which take their SIGTERM checkpoint, and join): past it, the ones still on the old round are
# replaced by new pods, as after a store lost without notice.
REJOIN_TIMEOUT = datetime.timedelta(minutes=3)


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


@dataclass
class Decision:
    actions: list[act.Action]
    status: dict[str, Any]

    @property
    def draining(self) -> bool:
        """A drain waits on the workers' checkpoint, and a store move on the workers re-joining, which no Kubernetes
        event announces: the shell polls closely."""
        return bool(self.status.get("drains") or (self.status.get("rendezvous") or {}).get("movingFrom"))


def _set_condition(conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
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


def _grace_seconds(deadline: datetime.datetime, now: datetime.datetime, margin: float) -> int:
    """An evicted pod's grace: the time left before its node goes, and never less than the safety margin, so that a
    notice seen late (a 30 s notice read after 25 s, an operator that just failed over) still leaves the SIGTERM
    checkpoint time to run."""
    return max(math.ceil((deadline - now).total_seconds()), math.ceil(margin))


class _Reconcile:
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

    # -- helpers --------------------------------------------------------------------------------------------

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.actions.append(act.Event("Warning" if warning else "Normal", reason, message))

    def condition(self, type_: str, status: bool, reason: str, message: str) -> None:
        _set_condition(self.conditions, type_, status, reason, message, self.now, self.o.generation)

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

    # -- the steps ------------------------------------------------------------------------------------------

    def step(self, name: str, run: Callable[[], object]) -> None:
        """Runs one step; an exception (a spec value no check foresaw, a corner of the world nobody expected) is
        reported on the job and the other steps still run: a bug in scaling must never stop a drain."""
        try:
            run()
        except Exception as e:  # reported on the job (report_errors), never swallowed
            self.errors.append(f"{name}: {type(e).__name__}: {e}")

    def run(self) -> Decision:
        done = next((w for w in self.workers() if w.completed), None)
        if self.phase in TERMINAL:
            self.step("cleanup", self.finish_cleanup)
        elif done is not None:
            self.step("succeed", lambda: self.succeed(done))
        elif self.spec.suspend:
            self.step("suspend", self.suspend)
        else:
            # First: the job's pods are fenced in before any of them is created.
            self.step("network policy", self.ensure_network_policy)
            self.step("orphans", self.collect_orphans)
            self.step("accounting", self.account_lost_workers)
            self.step("script failures", self.count_script_failures)
            if not self.over_budget():
                # Drains first: whatever fails further on, a notice still gets its checkpoint and its eviction.
                self.step("drain", self.drain)
                self.step("rendezvous", self.ensure_rendezvous)
                self.step("scale", self.scale)
                self.step("phase", self.update_phase)
        self.report_errors()
        return Decision(self.actions, self.status())

    def report_errors(self) -> None:
        previous = next((c for c in self.o.status.conditions if c.get("type") == "ReconcileError"), None)
        errors = [*self.errors, *(f"refused by the API: {r}" for r in self.o.refused)]
        if errors:
            message = "; ".join(errors)[:1024]
            self.condition("ReconcileError", True, "StepFailed", message)
            # One event per distinct error, not one per pass: a job stuck on bad input must not flood the API.
            if previous is None or previous.get("status") != "True" or previous.get("message") != message:
                self.event("ReconcileError", message, warning=True)
        elif previous is not None:
            self.condition("ReconcileError", False, "Recovered", "the last pass ran every step")

    def finish_cleanup(self) -> None:
        for pod in self.o.pods:
            if pod.active:
                self.remove(pod, f"job {self.phase.lower()}")
        ttl = self.spec.ttl_seconds_after_finished
        if ttl is None or self.completion_time is None:
            return
        if (self.now - self.completion_time).total_seconds() >= ttl:
            self.actions.append(act.DeleteJob())

    def succeed(self, done: PodView) -> None:
        final = done.final_checkpoint
        # The endpoints are gone by now; only the termination message tells of the final checkpoint.
        if isinstance(final.get("step"), int) and final["step"] >= int(self.last_checkpoint.get("step", -1)):
            self.last_checkpoint = {k: final[k] for k in ("step", "time", "uri") if final.get(k) is not None}
        self.phase = "Succeeded"
        self.completion_time = self.now
        self.drains.clear()
        self.event("Succeeded", f"trainer reported completion (worker {done.name})")
        self.condition("Succeeded", True, "TrainerCompleted", "the trainer reported that training completed")
        self.condition("Ready", False, "Succeeded", "training completed")
        self.finish_cleanup()

    def suspend(self) -> None:
        pods = [p for p in self.o.pods if p.active]
        for pod in pods:
            # Graceful: SIGTERM makes the trainer take its coordinated checkpoint before it exits.
            self.remove(pod, "job suspended")
        if pods:
            self.event("Suspended", f"suspended: stopping {len(pods)} pods; the checkpoint is kept")
        self.phase = "Suspended"
        self.pending_since = self.scale_up_after = None
        self.drains.clear()
        self.condition("Ready", False, "Suspended", "spec.suspend is true")

    def ensure_network_policy(self) -> None:
        if self.o.network_policy is None:
            return
        policy = render_network_policy(self.o.job, self.o.network_policy)
        # Only when the one in the cluster is missing or differs: a current policy costs no API call.
        if policy["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != self.o.network_policy_hash:
            self.actions.append(act.EnsureObject(policy))

    def collect_orphans(self) -> None:
        """Pods bound to a node that no longer exists never finish a graceful termination (no kubelet is left to
        confirm it): they would hold the job's pods on a lost node forever, as Terminating. kube-controller-manager's
        pod garbage collector force-deletes such pods too, but only after its 40 s quarantine (pkg/controller/podgc);
        nothing can run on a deleted node, so they go now, with grace 0."""
        if "nodeHealth" not in self.spec.termination.sources:
            return
        for pod in self.o.pods:
            if not pod.node or pod.node in self.o.nodes:
                continue
            if pod.role == "worker":
                self.record_preemption(pod, f"node {pod.node} was deleted")
            self.remove(pod, f"node {pod.node} deleted", grace=0)

    def account_lost_workers(self) -> None:
        sources = self.spec.termination.sources
        for w in self.workers():
            if w.name in self.accounted or w.name in self.removed:
                continue
            node = self.o.nodes.get(w.node) if w.node else None
            if w.node and node is None:
                continue  # its node is gone: collect_orphans
            notice = self.notice_for(w, node)
            drained = self.drain_of(w.node) is not None
            if w.phase == "Failed" or (w.phase == "Succeeded" and not w.completed):
                if w.deletion_reason:
                    self.account(w)  # removed by the operator (scale-down, new round, return to spot): not a loss
                elif notice or drained or w.disruption_reason:
                    self.record_preemption(w, notice.reason if notice else "evicted after a notice")
                else:
                    self.account(w)
                    self.failures += 1
                    self.event("WorkerFailed", f"worker {w.name} failed (exit code {w.exit_code}); "
                               f"failures {self.failures}/{self.spec.max_failures}", warning=True)
                self.remove(w, "worker exited")
            elif node is not None and not node.ready and not w.deleting and "nodeHealth" in sources:
                if (notice and notice.graceful) or w.disruption_reason == "TerminationByKubelet":
                    # Graceful node shutdown: the kubelet is terminating the pods with their grace period, so the
                    # SIGTERM checkpoint still runs; the drain asks for it. Deleting with grace 0 would kill it.
                    continue
                # The node stopped heartbeating: nothing on it can checkpoint any more.
                self.record_preemption(w, f"node {node.name} is {node.ready_status} ({node.ready_reason})")
                self.remove(w, "node not ready", grace=0)
            elif w.deleting and drained:
                self.record_preemption(w, "evicted after an interruption notice")

    def count_script_failures(self) -> None:
        """The training script's own crashes, as the workers report them (torchrun restarts the worker group
        whatever failed, so a script that crashes at the same step every time never fails its pod). A crash that
        hits every rank at once is one failure, not one per pod; a peer's loss is not reported as one."""
        new: list[int] = []
        for pod, trainer in self.o.trainers.items():
            if trainer is None or trainer.script_failures is None:
                continue
            seen = self.script_failures.get(pod, 0)
            if trainer.script_failures > seen:
                new.append(trainer.script_failures - seen)
                self.last_error = (trainer.error or "unknown error")[:1024]
            self.script_failures[pod] = trainer.script_failures
        present = {p.name for p in self.o.pods}
        self.script_failures = {pod: n for pod, n in self.script_failures.items() if pod in present}
        if new:
            self.failures += max(new)
            self.event("WorkerFailed", f"the training script failed ({self.last_error}); failures "
                       f"{self.failures}/{self.spec.max_failures}", warning=True)

    def over_budget(self) -> bool:
        why = None
        if self.failures > self.spec.max_failures:
            why = f"{self.failures} worker failures exceed spec.budgets.maxFailures={self.spec.max_failures}"
            if self.last_error:
                why += f"; last error: {self.last_error}"
        elif self.spec.max_preemptions is not None and self.preemptions > self.spec.max_preemptions:
            why = f"{self.preemptions} preemptions exceed spec.budgets.maxPreemptions={self.spec.max_preemptions}"
        if why is None:
            return False
        self.phase = "Failed"
        self.completion_time = self.now
        self.drains.clear()
        self.event("Failed", why, warning=True)
        self.condition("Failed", True, "BudgetExceeded", why)
        self.condition("Ready", False, "Failed", why)
        self.finish_cleanup()
        return True

    # -- the rendezvous store -------------------------------------------------------------------------------

    def ensure_rendezvous(self) -> None:
        stores = [p for p in self.o.pods if p.role == "rendezvous"]
        previous = self.current_store()
        if self.round == 0 or previous is None or self.store_move:
            planned = bool(self.store_move and previous is not None)
            if planned and previous is not None:
                self.event("RendezvousMoved", f"rendezvous store {previous.name} leaves node {previous.node} "
                           f"({self.store_move}); round {self.round + 1} starts on a new store, and the workers "
                           "re-join it in their own pods once it runs")
            elif self.round > 0:
                self.event("RendezvousLost", f"rendezvous store of round {self.round} was lost without notice; "
                           f"starting round {self.round + 1}; {self._steps_lost_text()}", warning=True)
            # Only a planned move keeps the workers: their agents are told where the new store is. Without notice
            # the old round's agents have lost their store, and its workers restart in the new round as new pods.
            self.moving_from, self.move_started = (self.round, self.now) if planned else (0, None)
            self.round += 1
            zone = self._rendezvous_zone(avoid=previous.zone if previous else None)
            self.actions.append(act.EnsureObject(render_rendezvous_service(self.o.job, self.spec, self.round)))
            self.actions.append(act.EnsureObject(render_rendezvous_pdb(self.o.job)))
            if self.o.job.control_token:  # the workers' control token (pods.render_control_secret)
                self.actions.append(act.EnsureObject(render_control_secret(self.o.job)))
            self.actions.append(act.CreatePod(render_rendezvous(self.o.job, self.spec, zone, self.round)))
        self._rejoin()
        on_new_store = [w for w in self.live_workers() if w.round == self.round and w.ready and w.phase == "Running"]
        formed = len(on_new_store) >= self.spec.min_nodes and not self.rejoining_workers()
        for p in stores:
            if p.round == self.round or not p.active or p.name in self.removed:
                continue
            # The old store serves the old round's agents until they have stopped (their SIGTERM checkpoint needs the
            # rendezvous alive); it goes once the new round has formed, or at once when its node is lost anyway.
            old_round_running = any(w.round == p.round and (w.active or w.deleting) for w in self.workers())
            if formed or not old_round_running or not self._node_ok(p):
                self.remove(p, "old rendezvous round", grace=0)
        for w in self.workers():
            if w.round != self.round and w.active and w not in self.rejoining_workers():
                # An agent cannot join a store it has never seen: old-round workers restart in the new round.
                self.remove(w, f"rendezvous round {self.round} started")

    def _rejoin(self) -> None:
        """A planned store move: once the new store runs, every worker of the old round is told where it is (again
        each pass until its trainer reports the new round); one that reports it takes the new round's label. A
        worker whose endpoint cannot be reached, or that has not re-joined within REJOIN_TIMEOUT, is replaced."""
        rejoining = self.rejoining_workers()
        if not rejoining:
            self.moving_from, self.move_started = 0, None
            return
        store = self.current_store()
        if store is None or store.phase != "Running" or not store.ready or not store.ip:
            return  # ready: its TCP readiness probe passed, the store listens
        rendezvous_id = self.o.job.rendezvous_id(self.round)
        overdue = self.move_started is not None and self.now >= self.move_started + REJOIN_TIMEOUT
        told = []
        for w in rejoining:
            trainer = self.o.trainers.get(w.name)
            if trainer is not None and trainer.rendezvous_id == rendezvous_id:
                self.actions.append(act.LabelPod(w.name, ((ROUND_LABEL, str(self.round)),)))
            elif (w.name in self.o.trainers and trainer is None) or overdue or not w.ip:
                why = "has not re-joined in time" if overdue else "cannot be told where the store is"
                self.remove(w, f"rendezvous round {self.round} started; the worker {why}")
            else:
                told.append((w.name, w.ip or ""))
        if told:
            self.actions.append(act.MoveRendezvous(rendezvous_id, f"{store.ip}:{self.spec.rendezvous_port}",
                                                   self.round, tuple(told)))

    def _steps_lost_text(self) -> str:
        kept = self.last_checkpoint.get("step")
        steps = [t.step for t in self.o.trainers.values() if t is not None and t.step is not None]
        if isinstance(kept, int) and steps:
            return f"{max(0, max(steps) - kept)} steps since the checkpoint of step {kept} are lost"
        if isinstance(kept, int):
            return f"training resumes from the checkpoint of step {kept}; the steps after it are lost"
        return "no durable checkpoint is known: training restarts from the start"

    def _node_ok(self, pod: PodView) -> bool:
        if pod.node is None:
            return True
        node = self.o.nodes.get(pod.node)
        return node is not None and node.ready and not node.deleting

    def _rendezvous_zone(self, avoid: str | None = None) -> str | None:
        """The zone of the stable pool with the most nodes that could take the store now (zone spreading does not
        apply to one pod); a store that moves prefers another zone than the one it leaves, where one exists."""
        pool = self.spec.pool(self.spec.rendezvous_pool_name)
        tolerations = placement.pool_tolerations(self.spec, pool)
        zones = Counter(n.zone for n in self.o.nodes.values()
                        if n.zone and pool.matches(dict(n.labels)) and placement.node_accepts(n, tolerations))
        return min(zones, key=lambda z: (z == avoid, -zones[z], z)) if zones else None

    def _store_move_reason(self, store: PodView) -> str | None:
        """Why a healthy store should move although no cloud announced its node's end."""
        if not any(p.name == store.pool for p in self.spec.pools):
            return f"pool {store.pool} is no longer in spec.placement.pools"
        node = self.o.nodes.get(store.node or "")
        if node is not None and node.unschedulable:
            return f"node {node.name} is cordoned"
        return None

    # -- drains: act on the warning ----------------------------------------------------------------------------

    def drain_of(self, node_name: str | None) -> Drain | None:
        """The drain of this very node (by UID: a new node that reuses the name is not being drained)."""
        drain = self.drains.get(node_name or "")
        if drain is None:
            return None
        node = self.o.nodes.get(drain.node)
        return drain if node is None or drain.concerns(node) else None

    def drain(self) -> None:
        for node_name, d in list(self.drains.items()):
            if (node := self.o.nodes.get(node_name)) is not None and not d.concerns(node):
                del self.drains[node_name]  # a new node reuses the name: the old node's drain is over
        live = self.live_workers()
        store = self.current_store()
        watched: dict[str, PodView] = {w.node: w for w in live if w.node}
        if store is not None and store.node:
            watched.setdefault(store.node, store)
        fresh: list[tuple[TerminationNotice, NodeView | None]] = []
        for node_name, pod in watched.items():
            node = self.o.nodes.get(node_name)
            if self.drain_of(node_name) is not None:
                continue
            notice = self.notice_for(pod, node)
            if notice is None and store is not None and store.node == node_name:
                why = self._store_move_reason(store)
                if why:
                    notice = TerminationNotice(node_name, "rendezvous", why, self.now + STORE_MOVE_DEADLINE)
            if notice:  # late ones too: a deadline already past still gets a checkpoint request and a graceful stop
                fresh.append((notice, node))
        if fresh:
            self._start_drains(fresh, live)
        self._act_when_due(store)
        self._forget_finished_drains()
        checkpointing = bool(self.drains)
        self.condition("Checkpointing", checkpointing, "InterruptionNotice" if checkpointing else "Idle",
                       "coordinated checkpoint requested before nodes are reclaimed" if checkpointing
                       else "no drain in progress")

    def _start_drains(self, fresh: Sequence[tuple[TerminationNotice, NodeView | None]],
                      live: Sequence[PodView]) -> None:
        in_flight = next(iter(self.drains.values()), None)
        request_id = in_flight.request_id if in_flight else f"{self.o.job.uid[:8]}-{int(self.now.timestamp())}"
        for notice, node in fresh:
            self.drains[notice.node] = Drain(notice.node, notice.source, notice.deadline, request_id, self.now,
                                             node.uid if node else "")
        notices = [n for n, _ in fresh]
        nodes = ", ".join(sorted(n.node for n in notices))
        deadline = min(n.deadline for n in notices)
        # Notices of one burst may arrive over several reconciles; later ones ride on the checkpoint already
        # requested, so the event says which checkpoint covers them rather than announcing another.
        action = (f"covered by the coordinated checkpoint {request_id} already requested" if in_flight else
                  f"requesting coordinated checkpoint {request_id} before {format_time(deadline)}")
        self.event("InterruptionNotice", f"{len(notices)} node(s) will be reclaimed ({nodes}; "
                   f"{notices[0].reason}); {action}", warning=True)
        if not in_flight:
            self.actions.append(act.RequestCheckpoint(request_id, notices[0].reason, format_time(deadline),
                                                      tuple((w.name, w.ip) for w in live if w.ip)))

    def _durable(self, drain: Drain) -> bool:
        return any(t is not None and t.checkpoint_request_id == drain.request_id for t in self.o.trainers.values())

    def _act_when_due(self, store: PodView | None) -> None:
        margin = self.spec.termination.safety_margin_seconds
        live = self.live_workers()
        by_node = {w.node: w for w in live if w.node}
        retried: set[str] = set()
        for node_name, d in list(self.drains.items()):
            worker = by_node.get(node_name)
            holds_store = store is not None and store.node == node_name
            if worker is None and not holds_store:
                continue
            durable = self._durable(d)
            unreachable = worker is not None and worker.name in self.o.trainers and self.o.trainers[worker.name] is None
            due = self.now >= d.deadline - datetime.timedelta(seconds=margin)
            if not (durable or unreachable or due or not live):
                if d.request_id not in retried:
                    retried.add(d.request_id)
                    self._request_again(d, live)
                continue
            why = ("checkpoint durable" if durable else "control endpoint unreachable" if unreachable else
                   "no worker to checkpoint" if not live else "deadline minus safety margin reached")
            if holds_store:
                self.store_move = f"{d.source}: {why}"
            if worker is None:
                continue
            trainer = self.o.trainers.get(worker.name)
            if not durable and trainer and trainer.step is not None and trainer.checkpoint_step is not None:
                self.lost_steps += max(0, trainer.step - trainer.checkpoint_step)
            self.record_preemption(worker, f"interruption notice ({d.source}), drained: {why}")
            self.removed.add(worker.name)
            outcome = "durable" if durable else "unreachable" if unreachable else "deadline"
            self.actions.append(act.EvictPod(worker.name, _grace_seconds(d.deadline, self.now, margin), outcome,
                                             d.requested_at))

    def _request_again(self, drain: Drain, live: Sequence[PodView]) -> None:
        """A checkpoint request a worker answered with an error, or never received, is sent again until the
        deadline: workers whose endpoint answers but does not know the request get it once more (the same id is a
        no-op for those that have it)."""
        missing = tuple((w.name, w.ip) for w in live if w.ip and (t := self.o.trainers.get(w.name)) is not None
                        and not t.knows(drain.request_id))
        if missing:
            self.actions.append(act.RequestCheckpoint(drain.request_id, f"{drain.source} (retry)",
                                                      format_time(drain.deadline), missing))

    def _forget_finished_drains(self) -> None:
        """A drain ends when none of the job's pods is left on its node (or the node, or its name's owner, is gone);
        the node is then marked drained, which acknowledges an Azure Scheduled Event."""
        for node_name in list(self.drains):
            node = self.o.nodes.get(node_name)
            left = [p for p in self.o.pods if p.node == node_name and (p.active or p.deleting)]
            if node is None:
                del self.drains[node_name]
            elif not left:
                del self.drains[node_name]
                self.actions.append(act.MarkNodeDrained(node_name))

    # -- scaling and placement -----------------------------------------------------------------------------

    def scale(self) -> None:
        spec = self.spec
        live = self.live_workers()
        target = min(max(spec.target_nodes, spec.min_nodes), spec.max_nodes)
        self._scale_down(live, target)
        self._replace_stranded(self.live_workers())
        live = self.live_workers()
        spot_offers = self._offerings(fallback_active=False)
        missing = target - len(live)
        # Spot is short when the workers still missing have no spot offering left. A spot worker that is merely
        # Pending is not a shortage: every autoscaled node starts that way; one whose node does not come is
        # re-placed (and its zone cooled down) by _replace_stranded, which is what leads to a shortage.
        short_of_spot = missing > placement.spot_capacity(spot_offers, spec)
        if short_of_spot and self.pending_since is None:
            self.pending_since = self.now
        elif not short_of_spot:
            self.pending_since = None
        # Fall back only once spot has been short for spec.fallback.after: falling back on the first Unschedulable
        # spot worker ignored `after` and flapped between spot and on-demand.
        fallback_after = datetime.timedelta(seconds=spec.fallback.after_seconds) if spec.fallback else None
        fallback_active = bool(fallback_after is not None and self.pending_since is not None
                               and self.now - self.pending_since >= fallback_after)
        available = self._offerings(fallback_active=True) if fallback_active else spot_offers

        count = self._batched(missing, sum(o.free_nodes for o in available), bool(live))
        choices = placement.choose(spec, available, live, count)
        if choices:
            was_fallback = [c for c in choices if not spec.pool(c.pool).spot]
            if was_fallback:
                self.event("FallbackToOnDemand", f"spot capacity short for {self._since_text()}; placing "
                           f"{len(was_fallback)} worker(s) on on-demand pool {was_fallback[0].pool}", warning=True)
            self._create(choices)
            self.event("ScaleUp", f"world size {len(live)} -> {len(live) + len(choices)} nodes "
                       f"(target {target}): " + ", ".join(f"{c.pool}/{c.zone}" for c in choices))
        elif missing > 0 and not available:
            self.message = (f"{len(live)}/{target} workers; no free node in pools "
                            f"{', '.join(p.name for p in placement.worker_pools(spec, fallback_active))}"
                            + (f" (cooldown: {', '.join(sorted(self.cooldowns))})" if self.cooldowns else ""))
        self._return_to_spot(spot_offers)
        _set_condition(self.conditions, "FallbackActive", fallback_active or any(
            not spec.pool(w.pool).spot for w in self.live_workers() if spec.fallback and w.pool == spec.fallback.pool),
            "SpotCapacityShort" if fallback_active else "SpotAvailable",
            "workers run on the on-demand fallback pool" if fallback_active else "workers run on spot",
            self.now, self.o.generation)

    def _offerings(self, fallback_active: bool, workers: Sequence[PodView] | None = None,
                   cooldowns: Mapping[str, datetime.datetime] | None = None) -> list[placement.Offering]:
        return placement.offerings(
            self.spec, self.o.nodes.values(), self.workers() if workers is None else workers,
            self.cooldowns if cooldowns is None else cooldowns, self.now, fallback_active,
            node_pools=self.o.node_pools, room=self.o.node_room)

    def _replace_stranded(self, live: list[PodView]) -> None:
        """A pending worker (or return-to-spot probe) whose node will not come is placed again elsewhere: at once
        when its pool and zone can no longer offer a node at all (the zone lost its last node while the worker was
        being placed, its NodePool reached its limits), as soon as the autoscaler reports it cannot serve them
        (``Observed.unservable``), and after the pool's provisioningTimeout otherwise (the autoscaler did not
        deliver); in the last two cases with the pool and zone cooled down so the next offering is tried."""
        anywhere = {(o.pool, o.zone) for o in self._offerings(fallback_active=True, workers=[], cooldowns={})}
        probes = [p for p in self.o.pods if p.role == PROBE_ROLE and p.active]
        for w in [*live, *probes]:
            if w.phase != "Pending" or w.node or w.name in self.removed:
                continue
            key = placement.cooldown_key(w.pool, w.zone)
            if w.unschedulable_since and (w.pool, w.zone) not in anywhere:
                self.remove(w, f"{key} can offer no node; placing the {w.role} elsewhere")
            elif why := self.o.unservable.get(w.name):
                until = self._cool_down(key)
                self.remove(w, f"the autoscaler cannot serve {key}")
                self.event("CapacityUnavailable", f"the autoscaler cannot provision a node in {key} for {w.role} "
                           f"{w.name} ({why}); {key} avoided until {until}", warning=True)
            elif w.created is not None and self.now - w.created >= datetime.timedelta(
                    seconds=self.spec.pool(w.pool).provisioning_timeout_seconds):
                until = self._cool_down(key)
                self.remove(w, f"no node for {key} within its provisioning timeout")
                waited = int((self.now - w.created).total_seconds())
                self.event("ProvisioningTimeout", f"{w.role} {w.name} waited {waited} s for a node in {key}; {key} "
                           f"avoided until {until}", warning=True)

    def _cool_down(self, key: str) -> str:
        """Avoids a pool and zone for spec.placement.cooldown; returns until when, as text."""
        self.cooldowns[key] = self.now + datetime.timedelta(seconds=self.spec.cooldown_seconds)
        return format_time(self.cooldowns[key])

    def _since_text(self) -> str:
        if self.pending_since is None:
            return "now"
        return f"{int((self.now - self.pending_since).total_seconds())} s"

    def _batched(self, missing: int, room: int, running: bool) -> int:
        """Joins restart every worker, so above min they are batched over spec.elastic.scaleUpWindow; the first
        workers, and any needed to get back to min, are created at once."""
        if missing <= 0 or room <= 0:
            self.scale_up_after = None
            return 0
        live = len(self.live_workers())
        if not running or live < self.spec.min_nodes:
            self.scale_up_after = None
            return min(missing, room)
        if self.scale_up_after is None:
            self.scale_up_after = self.now + datetime.timedelta(seconds=self.spec.scale_up_window_seconds)
            return 0
        if self.now < self.scale_up_after:
            return 0
        self.scale_up_after = None
        return min(missing, room)

    def _create(self, choices: Sequence[placement.Choice]) -> None:
        mtbf = None
        if self.start_time and self.preemptions:
            mtbf = (self.now - self.start_time).total_seconds() / self.preemptions
        for choice in choices:
            self.serial += 1
            self.actions.append(act.CreatePod(render_worker(self.o.job, self.spec, choice, self.serial, self.round,
                                                            mtbf)))

    def _scale_down(self, live: list[PodView], target: int) -> None:
        extra = len(live) - target
        if extra <= 0:
            return
        # Pending first, then on-demand, then the newest: the cheapest way back to the target.
        order = sorted(live, key=lambda w: (w.phase != "Pending", self.spec.pool(w.pool).spot, -w.serial))
        for w in order[:extra]:
            self.remove(w, "scale down")
        reason = "MaxBelowWorldSize" if self.spec.max_nodes < len(live) else "ScaleDown"
        self.event(reason, f"world size {len(live)} -> {target} nodes: spec.elastic now allows at most "
                   f"{self.spec.max_nodes} (target {target}); removing {extra} worker(s) gracefully")
        _set_condition(self.conditions, "SpecChange", True, reason,
                       f"scaled from {len(live)} to {target} workers after a spec update", self.now,
                       self.o.generation)

    def _return_to_spot(self, spot_offers: Sequence[placement.Offering]) -> None:
        """Moves workers from the on-demand fallback back to spot once spot capacity has really arrived: spot nodes
        that exist and are free. An autoscaled spot pool shows no such node until something asks for one, so while
        workers run on on-demand one probe pod (the worker's size and placement, running nothing) asks for it; once
        the probe runs, its node is there and one worker moves. A probe that gets no node times out like a worker
        and costs the job nothing: the workers keep training on on-demand meanwhile."""
        fb = self.spec.fallback
        probes = [p for p in self.o.pods if p.role == PROBE_ROLE and p.active and p.name not in self.removed]
        on_demand = [w for w in self.live_workers() if fb and w.pool == fb.pool and not self.spec.pool(w.pool).spot]
        if not fb or not fb.return_to_spot or not on_demand or self.pending_since is not None:
            for p in probes:
                self.remove(p, "no probe needed", grace=0)
            return
        if any(w.phase == "Pending" for w in self.live_workers()):
            return
        arrived = [p for p in probes if p.phase == "Running" and p.node]
        spot_live = [w for w in self.live_workers() if w.pool != fb.pool]
        existing = [placement.Offering(o.pool, o.zone, o.existing, o.existing) for o in spot_offers if o.existing > 0]
        for p in arrived:
            # The probe's node is the capacity that arrived: removing the probe makes room there for the worker
            # that moves. (A node whose room is unknown already counts as free among the existing offerings.)
            self.remove(p, "spot capacity arrived", grace=0)
            if p.node in self.o.node_room:
                existing.append(placement.Offering(p.pool, p.zone, 1, 1))
        room = sum(o.free_nodes for o in existing)
        if room > 0:
            choices = placement.choose(self.spec, existing, spot_live, min(room, len(on_demand)))
            if choices:
                for w in sorted(on_demand, key=lambda w: -w.serial)[: len(choices)]:
                    self.remove(w, "returning to spot")
                self._create(choices)
                self.event("ReturnToSpot", f"spot capacity is back: moving {len(choices)} worker(s) from on-demand "
                           "to " + ", ".join(f"{c.pool}/{c.zone}" for c in choices))
                return
        if probes:
            return  # one probe at a time
        hoped = [o for o in spot_offers if o.free_nodes > o.existing]
        for choice in placement.choose(self.spec, hoped, spot_live, 1):
            self.serial += 1
            pool = self.spec.pool(choice.pool)
            self.actions.append(act.CreatePod(render_probe(
                self.o.job, choice, self.serial, self.round, placement.pool_node_selector(self.spec, pool),
                placement.pool_tolerations(self.spec, pool), placement.worker_request(self.spec))))
            self.event("SpotProbe", f"asking {choice.pool}/{choice.zone} for a spot node with a probe pod; "
                       f"workers stay on on-demand until it runs")

    # -- status --------------------------------------------------------------------------------------------

    def update_phase(self) -> None:
        live = self.live_workers()
        ready = [w for w in live if w.ready and w.phase == "Running"]
        # Return-to-spot probes come and go without touching the training world.
        probes = self._probe_names()
        created = any((isinstance(a, act.CreatePod) and a.manifest["metadata"]["labels"].get(ROLE_LABEL) != PROBE_ROLE)
                      or (isinstance(a, act.DeletePod) and a.name not in probes)
                      or isinstance(a, act.EvictPod) for a in self.actions)
        min_nodes = self.spec.min_nodes
        if len(ready) >= min_nodes and self.start_time is None:
            self.start_time = self.now
        if len(ready) < min_nodes:
            self.phase = "Pending" if self.start_time is None else "Waiting"
            msg = self.message or f"{len(ready)} of at least {min_nodes} workers ready"
            self.condition("Waiting", True, "BelowMinNodes", msg)
            self.condition("Ready", False, "BelowMinNodes", msg)
            if self.phase == "Waiting" and self.o.status.phase != "Waiting":
                self.event("WaitingForCapacity", f"below spec.elastic.minNodes={min_nodes}: {msg}; the last "
                           "checkpoint is safe and training resumes when capacity returns", warning=True)
            return
        self.phase = "Rescaling" if (created or self.drains or len(ready) < len(live)) else "Running"
        self.condition("Waiting", False, "EnoughWorkers", f"{len(ready)} workers ready")
        self.condition("Ready", True, "Training", f"training on {len(ready)} nodes")

    def _cost(self, live: Sequence[PodView]) -> dict[str, Any]:
        hourly = on_demand = 0.0
        for w in live:
            pool = self.spec.pool(w.pool) if any(p.name == w.pool for p in self.spec.pools) else None
            if pool is None or pool.hourly_price is None:
                continue
            hourly += pool.hourly_price
            on_demand += pool.on_demand_hourly_price or pool.hourly_price
        saving = round(100 * (1 - hourly / on_demand)) if on_demand else 0
        return {"hourly": f"{hourly:.4f}", "onDemandHourly": f"{on_demand:.4f}", "savingPercent": saving}

    def _trainer_checkpoint(self) -> None:
        best = max((t for t in self.o.trainers.values() if t and t.checkpoint_step is not None),
                   key=lambda t: t.checkpoint_step or 0, default=None)
        previous = int(self.last_checkpoint.get("step", -1))
        if best and best.checkpoint_step is not None and best.checkpoint_step >= previous:
            self.last_checkpoint = {"step": best.checkpoint_step, "time": best.checkpoint_time,
                                    "uri": best.checkpoint_uri}
            self.last_checkpoint = {k: v for k, v in self.last_checkpoint.items() if v is not None}

    def _probe_names(self) -> set[str]:
        return {p.name for p in self.o.pods if p.role == PROBE_ROLE}

    def _capacity_type(self, pool_name: str) -> str | None:
        pool = next((p for p in self.spec.pools if p.name == pool_name), None)
        return None if pool is None else ("spot" if pool.spot else "on-demand")

    def status(self) -> dict[str, Any]:
        self._trainer_checkpoint()
        all_live = self.live_workers()
        running = [w for w in all_live if w.phase == "Running"]
        ready = sum(1 for w in running if w.ready)
        desired = 0 if self.phase in (*TERMINAL, "Suspended") else min(
            max(self.spec.target_nodes, self.spec.min_nodes), self.spec.max_nodes)
        capacity_types = [c for w in running if (c := self._capacity_type(w.pool))]
        return JobStatus(
            phase=self.phase,
            observed_generation=self.o.generation,
            conditions=tuple(self.conditions),
            round=self.round,
            moving_from=self.moving_from,
            move_started=self.move_started,
            rendezvous_endpoint=self.o.job.rendezvous_endpoint(self.spec.rendezvous_port),
            rendezvous_id=self.o.job.rendezvous_id(self.round),
            serial=self.serial,
            preemptions=self.preemptions,
            failures=self.failures,
            lost_steps=self.o.status.lost_steps + self.lost_steps,
            preemptions_by_pool=dict(self.preemptions_by_pool),
            accounted=tuple(self.accounted[-ACCOUNTED_KEPT:]),
            cooldowns=self.cooldowns,
            pending_since=self.pending_since,
            scale_up_after=self.scale_up_after,
            start_time=self.start_time,
            completion_time=self.completion_time,
            drains=self.drains,
            last_checkpoint=self.last_checkpoint,
            selector=selector(self.o.job),
            ready_workers=ready,
            desired_workers=desired,
            world_size=ready * self.spec.nproc_per_node,
            workers={"byPool": dict(Counter(w.pool for w in running)), "byZone": dict(Counter(w.zone for w in running)),
                     "byCapacityType": dict(Counter(capacity_types))},
            cost=self._cost(all_live),
            script_failures=self.script_failures,
            last_error=self.last_error,
        ).to_body()


def decide(observed: Observed) -> Decision:
    return _Reconcile(observed).run()
