"""One reconcile of a SpotTrainingJob: the observed world in, actions and the new status out.

Level-triggered and idempotent: everything it needs to remember (round, pod serial, counted pods, cooldowns,
drains, timers) lives in the job's status, so an operator restarted at any point continues from the cluster.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spotrain_operator.api import JobSpec
from spotrain_operator.core import actions as act
from spotrain_operator.core import placement
from spotrain_operator.core.model import Drain, JobStatus, NodeView, PodView, format_time
from spotrain_operator.core.pods import (
    JobRef,
    render_rendezvous,
    render_rendezvous_service,
    render_worker,
    selector,
)
from spotrain_operator.core.termination import TerminationNotice, node_notice, pod_notice

ACCOUNTED_KEPT = 100
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class TrainerStatus:
    """What a worker's control endpoint reports (GET /status)."""

    step: int | None = None
    checkpoint_step: int | None = None
    checkpoint_time: str | None = None
    checkpoint_uri: str | None = None
    checkpoint_request_id: str | None = None
    completed: bool = False

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> TrainerStatus:
        last = body.get("last_checkpoint") or {}
        return cls(
            step=body.get("step"),
            checkpoint_step=last.get("step"),
            checkpoint_time=last.get("time"),
            checkpoint_uri=last.get("uri"),
            checkpoint_request_id=last.get("request_id"),
            completed=bool(body.get("completed")),
        )


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


@dataclass
class Decision:
    actions: list[act.Action]
    status: dict[str, Any]

    @property
    def needs_trainer_status(self) -> bool:
        return bool(self.status.get("drains"))


def _set_condition(conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
                   now: datetime.datetime, generation: int) -> None:
    value = "True" if status else "False"
    for c in conditions:
        if c["type"] == type_:
            if c["status"] != value:
                c["lastTransitionTime"] = format_time(now)
            c.update(status=value, reason=reason, message=message, observedGeneration=generation)
            return
    conditions.append({"type": type_, "status": value, "reason": reason, "message": message,
                       "lastTransitionTime": format_time(now), "observedGeneration": generation})


class _Reconcile:
    def __init__(self, o: Observed):
        self.o = o
        self.spec = o.spec
        self.now = o.now
        self.actions: list[act.Action] = []
        s = o.status
        self.round = s.round
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

    # -- helpers --------------------------------------------------------------------------------------------

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.actions.append(act.Event("Warning" if warning else "Normal", reason, message))

    def remove(self, pod: PodView, reason: str, grace: int | None = None) -> None:
        if pod.name in self.removed or pod.deleting:
            return
        self.removed.add(pod.name)
        self.actions.append(act.DeletePod(pod.name, reason, grace))

    def account(self, pod: PodView) -> None:
        self.accounted.append(pod.name)

    def workers(self) -> list[PodView]:
        return [p for p in self.o.pods if p.role == "worker"]

    def live_workers(self) -> list[PodView]:
        return [w for w in self.workers() if w.active and w.name not in self.removed and w.round == self.round]

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

    # -- the steps ------------------------------------------------------------------------------------------

    def run(self) -> Decision:
        if self.phase in TERMINAL:
            self.finish_cleanup()
        elif any(w.completed for w in self.workers()):
            self.succeed()
        elif self.spec.suspend:
            self.suspend()
        else:
            self.account_lost_workers()
            if not self.over_budget():
                self.ensure_rendezvous()
                self.drain()
                self.scale()
                self.update_phase()
        return Decision(self.actions, self.status())

    def finish_cleanup(self) -> None:
        for pod in self.o.pods:
            if pod.active:
                self.remove(pod, f"job {self.phase.lower()}")
        ttl = self.spec.ttl_seconds_after_finished
        expired = self.completion_time and self.now >= self.completion_time + datetime.timedelta(seconds=ttl or 0)
        if ttl is not None and expired:
            self.actions.append(act.DeleteJob())

    def succeed(self) -> None:
        done = next(w for w in self.workers() if w.completed)
        final = done.final_checkpoint
        # The endpoints are gone by now; only the termination message tells of the final checkpoint.
        if isinstance(final.get("step"), int) and final["step"] >= int(self.last_checkpoint.get("step", -1)):
            self.last_checkpoint = {k: final[k] for k in ("step", "time", "uri") if final.get(k) is not None}
        self.phase = "Succeeded"
        self.completion_time = self.now
        self.event("Succeeded", f"trainer reported completion (worker {done.name})")
        _set_condition(self.conditions, "Succeeded", True, "TrainerCompleted",
                       "the trainer reported that training completed", self.now, self.o.generation)
        _set_condition(self.conditions, "Ready", False, "Succeeded", "training completed", self.now,
                       self.o.generation)
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
        _set_condition(self.conditions, "Ready", False, "Suspended", "spec.suspend is true", self.now,
                       self.o.generation)

    def account_lost_workers(self) -> None:
        sources = self.spec.termination.sources
        for w in self.workers():
            if w.name in self.accounted or w.name in self.removed:
                continue
            node = self.o.nodes.get(w.node) if w.node else None
            if w.node and node is None:
                if "nodeHealth" in sources or w.deleting:
                    self.record_preemption(w, f"node {w.node} was deleted")
                    self.remove(w, "node deleted", grace=0)
                continue
            notice = (node and node_notice(node, self.now, sources, True)) or pod_notice(w, self.now, sources)
            drained = w.node in self.drains and self.drains[w.node].evicted
            if w.phase == "Failed" or (w.phase == "Succeeded" and not w.completed):
                if notice or drained or w.disruption_reason:
                    self.record_preemption(w, notice.reason if notice else "evicted after a notice")
                else:
                    self.account(w)
                    self.failures += 1
                    self.event("WorkerFailed", f"worker {w.name} failed (exit code {w.exit_code}); "
                               f"failures {self.failures}/{self.spec.max_failures}", warning=True)
                self.remove(w, "worker exited")
            elif node is not None and not node.ready and not w.deleting and "nodeHealth" in sources:
                # The node stopped heartbeating: nothing on it can checkpoint any more.
                self.record_preemption(w, f"node {node.name} is {node.ready_status} ({node.ready_reason})")
                self.remove(w, "node not ready", grace=0)
            elif w.deleting and drained:
                self.record_preemption(w, "evicted after an interruption notice")

    def over_budget(self) -> bool:
        why = None
        if self.failures > self.spec.max_failures:
            why = f"{self.failures} worker failures exceed spec.budgets.maxFailures={self.spec.max_failures}"
        elif self.spec.max_preemptions is not None and self.preemptions > self.spec.max_preemptions:
            why = f"{self.preemptions} preemptions exceed spec.budgets.maxPreemptions={self.spec.max_preemptions}"
        if why is None:
            return False
        self.phase = "Failed"
        self.completion_time = self.now
        self.event("Failed", why, warning=True)
        _set_condition(self.conditions, "Failed", True, "BudgetExceeded", why, self.now, self.o.generation)
        _set_condition(self.conditions, "Ready", False, "Failed", why, self.now, self.o.generation)
        self.finish_cleanup()
        return True

    def ensure_rendezvous(self) -> None:
        stores = [p for p in self.o.pods if p.role == "rendezvous"]
        current = [p for p in stores if p.round == self.round and self.round > 0]
        alive = [p for p in current if p.active and self._node_ok(p)]
        if self.round == 0 or not alive:
            if self.round > 0:
                self.event("RendezvousLost", f"rendezvous store of round {self.round} was lost; starting round "
                           f"{self.round + 1} (workers rejoin from the last checkpoint)", warning=True)
            self.round += 1
            zone = self._rendezvous_zone()
            self.actions.append(act.EnsureService(render_rendezvous_service(self.o.job, self.spec)))
            self.actions.append(act.CreatePod(render_rendezvous(self.o.job, self.spec, zone, self.round)))
        for p in stores:
            if p.round != self.round and p.active:
                self.remove(p, "old rendezvous round", grace=0)
        for w in self.workers():
            if w.round != self.round and w.active:
                # An agent cannot join a store it has never seen: old-round workers restart in the new round.
                self.remove(w, f"rendezvous round {self.round} started")

    def _node_ok(self, pod: PodView) -> bool:
        if pod.node is None:
            return True
        node = self.o.nodes.get(pod.node)
        return node is not None and node.ready and not node.deleting

    def _rendezvous_zone(self) -> str | None:
        """The zone of the stable pool with the most ready nodes (zone spreading does not apply to one pod)."""
        pool = self.spec.pool(self.spec.rendezvous_pool_name)
        zones = Counter(n.zone for n in self.o.nodes.values() if n.ready and pool.matches(dict(n.labels)))
        return min(zones, key=lambda z: (-zones[z], z)) if zones else None

    # -- drains (issue: act on the warning) ---------------------------------------------------------------

    def drain(self) -> None:
        term = self.spec.termination
        live = self.live_workers()
        by_node = {w.node: w for w in live if w.node}
        fresh: list[TerminationNotice] = []
        for node_name, worker in by_node.items():
            if node_name in self.drains:
                continue
            node = self.o.nodes.get(node_name)
            notice = (node and node_notice(node, self.now, term.sources, term.proactive_on_rebalance)) or pod_notice(
                worker, self.now, term.sources)
            if notice and notice.deadline > self.now:
                fresh.append(notice)
        if fresh:
            in_flight = next((d for d in self.drains.values() if not d.evicted), None)
            request_id = in_flight.request_id if in_flight else f"{self.o.job.uid[:8]}-{int(self.now.timestamp())}"
            for notice in fresh:
                self.drains[notice.node] = Drain(notice.node, notice.source, notice.deadline, request_id, self.now)
            nodes = ", ".join(sorted(n.node for n in fresh))
            deadline = min(n.deadline for n in fresh)
            # Notices of one burst may arrive over several reconciles; later ones ride on the checkpoint already
            # requested, so the event says which checkpoint covers them rather than announcing another.
            action = (f"covered by the coordinated checkpoint {request_id} already requested" if in_flight else
                      f"requesting coordinated checkpoint {request_id} before {format_time(deadline)}")
            self.event("InterruptionNotice", f"{len(fresh)} node(s) will be reclaimed ({nodes}; "
                       f"{fresh[0].reason}); {action}", warning=True)
            if not in_flight:
                self.actions.append(act.RequestCheckpoint(
                    request_id, fresh[0].reason, format_time(deadline),
                    tuple((w.name, w.ip) for w in live if w.ip)))
        self._evict_when_due(by_node)
        self._forget_finished_drains()
        checkpointing = any(not d.evicted for d in self.drains.values())
        _set_condition(self.conditions, "Checkpointing", checkpointing,
                       "InterruptionNotice" if checkpointing else "Idle",
                       "coordinated checkpoint requested before nodes are reclaimed" if checkpointing
                       else "no drain in progress", self.now, self.o.generation)

    def _evict_when_due(self, by_node: Mapping[str, PodView]) -> None:
        margin = datetime.timedelta(seconds=self.spec.termination.safety_margin_seconds)
        for node_name, d in list(self.drains.items()):
            if d.evicted:
                continue
            worker = by_node.get(node_name)
            if worker is None:
                self.drains[node_name] = Drain(d.node, d.source, d.deadline, d.request_id, d.requested_at, True)
                continue
            durable = any(t is not None and t.checkpoint_request_id == d.request_id for t in self.o.trainers.values())
            unreachable = worker.name in self.o.trainers and self.o.trainers[worker.name] is None
            due = self.now >= d.deadline - margin
            if not (durable or unreachable or due):
                continue
            grace = max(0, int((d.deadline - margin - self.now).total_seconds()))
            why = "checkpoint durable" if durable else ("control endpoint unreachable" if unreachable else
                                                        "deadline minus safety margin reached")
            trainer = self.o.trainers.get(worker.name)
            if not durable and trainer and trainer.step is not None and trainer.checkpoint_step is not None:
                self.lost_steps += max(0, trainer.step - trainer.checkpoint_step)
            self.record_preemption(worker, f"interruption notice ({d.source}), drained: {why}")
            self.removed.add(worker.name)
            self.actions.append(act.EvictPod(worker.name, grace))
            self.actions.append(act.MarkNodeDrained(node_name))
            self.drains[node_name] = Drain(d.node, d.source, d.deadline, d.request_id, d.requested_at, True)

    def _forget_finished_drains(self) -> None:
        on_nodes = {w.node for w in self.workers() if w.node and w.phase not in TERMINAL}
        for node_name, d in list(self.drains.items()):
            if d.evicted and (node_name not in self.o.nodes or node_name not in on_nodes):
                del self.drains[node_name]

    # -- scaling and placement -----------------------------------------------------------------------------

    def scale(self) -> None:
        spec = self.spec
        live = self.live_workers()
        target = min(max(spec.target_nodes, spec.min_nodes), spec.max_nodes)
        self._scale_down(live, target)
        self._replace_stranded(self.live_workers())
        live = self.live_workers()
        fallback_after = datetime.timedelta(seconds=spec.fallback.after_seconds) if spec.fallback else None
        unschedulable = [w for w in live if w.unschedulable_since and spec.pool(w.pool).spot]
        fallback_active = bool(
            fallback_after is not None
            and (unschedulable or (self.pending_since and self.now - self.pending_since >= fallback_after))
        )
        if fallback_active and unschedulable:
            for w in unschedulable:
                self.remove(w, "spot capacity unschedulable; falling back to on-demand")
            live = self.live_workers()
        available = placement.offerings(spec, self.o.nodes.values(), self.workers(), self.cooldowns, self.now,
                                        fallback_active)
        missing = target - len(live)
        spot_room = placement.spot_capacity(available, spec)
        short_of_spot = missing > spot_room or any(w.phase == "Pending" and w.unschedulable_since for w in live)
        if short_of_spot and self.pending_since is None:
            self.pending_since = self.now
        elif not short_of_spot:
            self.pending_since = None

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
        self._return_to_spot(available)
        _set_condition(self.conditions, "FallbackActive", fallback_active or any(
            not spec.pool(w.pool).spot for w in self.live_workers() if spec.fallback and w.pool == spec.fallback.pool),
            "SpotCapacityShort" if fallback_active else "SpotAvailable",
            "workers run on the on-demand fallback pool" if fallback_active else "workers run on spot",
            self.now, self.o.generation)

    def _replace_stranded(self, live: list[PodView]) -> None:
        """A worker pinned to a pool and zone that no longer has any node (a zone lost while it was being
        placed) would wait forever; it is removed so that it is placed again where capacity is."""
        anywhere = {(o.pool, o.zone) for o in placement.offerings(self.spec, self.o.nodes.values(), [], {}, self.now,
                                                                  True)}
        for w in live:
            if w.phase == "Pending" and w.unschedulable_since and (w.pool, w.zone) not in anywhere:
                self.remove(w, f"{w.pool}/{w.zone} has no node left; placing the worker elsewhere")

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

    def _return_to_spot(self, available: Sequence[placement.Offering]) -> None:
        fb = self.spec.fallback
        if not fb or not fb.return_to_spot:
            return
        on_demand = [w for w in self.live_workers() if w.pool == fb.pool and self.spec.pool(w.pool).spot is False]
        if not on_demand or any(w.phase == "Pending" for w in self.live_workers()):
            return
        spot_offers = [o for o in available if self.spec.pool(o.pool).spot]
        room = placement.spot_capacity(spot_offers, self.spec)
        if room <= 0 or self.pending_since is not None:
            return
        k = min(room, len(on_demand))
        spot_live = [w for w in self.live_workers() if w.pool != fb.pool]
        choices = placement.choose(self.spec, spot_offers, spot_live, k)
        if not choices:
            return
        leaving = sorted(on_demand, key=lambda w: -w.serial)[: len(choices)]
        for w in leaving:
            self.remove(w, "returning to spot")
        self._create(choices)
        self.event("ReturnToSpot", f"spot capacity is back: moving {len(choices)} worker(s) from on-demand to "
                   + ", ".join(f"{c.pool}/{c.zone}" for c in choices))

    # -- status --------------------------------------------------------------------------------------------

    def update_phase(self) -> None:
        live = self.live_workers()
        ready = [w for w in live if w.ready and w.phase == "Running"]
        created = any(isinstance(a, act.CreatePod | act.DeletePod | act.EvictPod) for a in self.actions)
        draining = any(not d.evicted for d in self.drains.values())
        min_nodes = self.spec.min_nodes
        if len(ready) >= min_nodes and self.start_time is None:
            self.start_time = self.now
        if len(ready) < min_nodes:
            self.phase = "Pending" if self.start_time is None else "Waiting"
            msg = self.message or f"{len(ready)} of at least {min_nodes} workers ready"
            _set_condition(self.conditions, "Waiting", True, "BelowMinNodes", msg, self.now, self.o.generation)
            _set_condition(self.conditions, "Ready", False, "BelowMinNodes", msg, self.now, self.o.generation)
            if self.phase == "Waiting" and self.o.status.phase != "Waiting":
                self.event("WaitingForCapacity", f"below spec.elastic.minNodes={min_nodes}: {msg}; the last "
                           "checkpoint is safe and training resumes when capacity returns", warning=True)
            return
        self.phase = "Rescaling" if (created or draining or len(ready) < len(live)) else "Running"
        _set_condition(self.conditions, "Waiting", False, "EnoughWorkers", f"{len(ready)} workers ready", self.now,
                       self.o.generation)
        _set_condition(self.conditions, "Ready", True, "Training", f"training on {len(ready)} nodes", self.now,
                       self.o.generation)

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

    def status(self) -> dict[str, Any]:
        self._trainer_checkpoint()
        live = [w for w in self.live_workers() if w.phase == "Running"]
        all_live = self.live_workers()
        ready = sum(1 for w in live if w.ready)
        desired = 0 if self.phase in (*TERMINAL, "Suspended") else min(
            max(self.spec.target_nodes, self.spec.min_nodes), self.spec.max_nodes)
        counts = {"byPool": Counter(w.pool for w in live), "byZone": Counter(w.zone for w in live),
                  "byCapacityType": Counter("spot" if self.spec.pool(w.pool).spot else "on-demand" for w in live
                                            if any(p.name == w.pool for p in self.spec.pools))}
        status: dict[str, Any] = {
            "phase": self.phase,
            "observedGeneration": self.o.generation,
            "conditions": self.conditions,
            "selector": selector(self.o.job),
            "readyWorkers": ready,
            "desiredWorkers": desired,
            "workersSummary": f"{ready}/{desired}",
            "worldSize": ready * self.spec.nproc_per_node,
            "workers": {k: dict(v) for k, v in counts.items()},
            "preemptions": self.preemptions,
            "preemptionsByPool": dict(self.preemptions_by_pool),
            "failures": self.failures,
            "podSerial": self.serial,
            "accountedPods": self.accounted[-ACCOUNTED_KEPT:],
            "rendezvous": {
                "endpoint": self.o.job.rendezvous_endpoint(self.spec.rendezvous_port),
                "id": self.o.job.rendezvous_id(self.round),
                "round": self.round,
            },
            "cooldowns": {k: format_time(v) for k, v in sorted(self.cooldowns.items())},
            "drains": {
                n: {"source": d.source, "deadline": format_time(d.deadline), "requestID": d.request_id,
                    "requestedAt": format_time(d.requested_at), "evicted": d.evicted}
                for n, d in sorted(self.drains.items())
            },
            "cost": self._cost(all_live),
            "lostSteps": self.o.status.lost_steps + self.lost_steps,
        }
        for key, value in (("pendingSince", self.pending_since), ("scaleUpAfter", self.scale_up_after),
                           ("startTime", self.start_time), ("completionTime", self.completion_time)):
            status[key] = format_time(value) if value else None
        if self.last_checkpoint:
            status["lastCheckpoint"] = self.last_checkpoint
        return status


def decide(observed: Observed) -> Decision:
    return _Reconcile(observed).run()
