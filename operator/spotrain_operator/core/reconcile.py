"""One reconcile of a SpotTrainingJob: the observed world in, actions and the new status out.

Level-triggered and idempotent: everything it needs to remember (round, pod serial, counted pods, cooldowns,
drains, timers) lives in the job's status, so an operator restarted at any point continues from the cluster. What
was done is read back from the cluster, not remembered: a drain does not record that its eviction was sent, it sees
the doomed pod terminating, so an eviction the API refused is simply sent again on the next pass.

The decisions are split by concern, one module each: ``accounting``, ``drains``, ``rendezvous``, ``scaling``, over
the shared ``pass_state``; this module runs them in order and holds the lifecycle (phases, budgets, success,
suspension) and the status written back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from spotrain_operator.core import actions as act
from spotrain_operator.core.accounting import Accounting
from spotrain_operator.core.drains import Drains
from spotrain_operator.core.model import JobStatus, PodView
from spotrain_operator.core.network import SPEC_HASH_ANNOTATION, render_network_policy
from spotrain_operator.core.pass_state import ACCOUNTED_KEPT, TERMINAL, Observed
from spotrain_operator.core.pods import (
    selector,
)
from spotrain_operator.core.provisioning import PROBE_ROLE
from spotrain_operator.core.rendezvous import Rounds
from spotrain_operator.core.scaling import Scaling
from spotrain_operator.wellknown import ROLE_LABEL

__all__ = ["Decision", "Observed", "decide"]


@dataclass
class Decision:
    actions: list[act.Action]
    status: dict[str, Any]

    @property
    def draining(self) -> bool:
        """The shell polls closely (JobStatus.awaiting_trainers)."""
        return JobStatus.from_body(self.status).awaiting_trainers



class _Reconcile(Accounting, Drains, Rounds, Scaling):
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

    def _probe_names(self) -> set[str]:
        return {p.name for p in self.o.pods if p.role == PROBE_ROLE}

    def status(self) -> dict[str, Any]:
        self._trainer_checkpoint()
        all_live = self.live_workers()
        running = [w for w in all_live if w.phase == "Running"]
        ready = sum(1 for w in running if w.ready)
        desired = 0 if self.phase in (*TERMINAL, "Suspended") else min(
            max(self.spec.target_nodes, self.spec.min_nodes), self.spec.max_nodes)
        capacity_types = [c for w in running if (c := self.spec.capacity_type(w.pool))]
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

