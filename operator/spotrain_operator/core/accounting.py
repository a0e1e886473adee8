"""Accounting: which lost workers were preempted and which failed, the script's own crashes, orphans on deleted
nodes, the cost of the running workers and the last durable checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spotrain_operator.core.model import PodView
from spotrain_operator.core.pass_state import PassState


class Accounting(PassState):
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

