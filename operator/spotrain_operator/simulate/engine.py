"""The discrete-event simulation: a simulated cluster and trainers around the operator's own ``decide``.

Each reconcile builds ``NodeView``/``PodView`` from dict manifests with their ``from_body``, reads the job
status back with ``JobStatus.from_body`` from the dict the previous decision returned (as the operator reads it
from the API server), calls ``core.reconcile.decide`` and applies its actions:

* ``CreatePod``: a pending pod; the simulated scheduler binds it to a free node matching its nodeSelector and
  tolerations (the core's ``placement.node_accepts``), one worker per node; its container runs
  ``Costs.pod_start_s`` later (node launch, image pull) and its torchrun agent joins the rendezvous.
* ``DeletePod``/``EvictPod``: SIGTERM to the pod's processes (grace 0: killed); the pod is gone when they exit.
* ``RequestCheckpoint``: the trainers take a coordinated synchronous checkpoint; once durable they report the
  request id, which is what lets the core evict.
* ``EnsureObject``, ``MarkNodeDrained``, ``Event``, ``DeleteJob``: recorded, nothing else to simulate.

The operator reconciles ``Costs.operator_reaction_s`` after any change it would be told of, every 0.5 s while a
drain waits on a checkpoint (the trainers' status is polled), at the timers its status holds (scale-up window,
fallback delay, cooldowns, drain deadlines) and every 10 s (its resync) while the job is not settled.

The trainers (all ranks move together, as torchrun restarts them together) follow spotrain_trainer: progress is
counted in node-seconds of useful work; a membership change (a join, a graceful stop, a lost peer) stops every
worker, re-forms the rendezvous and restores the last committed checkpoint; with spotrain a graceful stop first
takes a checkpoint (SIGTERM), so only a peer lost without notice rolls work back. Linear scaling is assumed: a
step at world size ``w`` takes ``N / w`` times as long as at full size ``N``.
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spotrain_operator import wellknown as wk
from spotrain_operator.core import actions as act
from spotrain_operator.core.model import JobStatus, NodeView, PodView, format_time, parse_time
from spotrain_operator.core.placement import node_accepts
from spotrain_operator.core.pods import JobRef
from spotrain_operator.core.reconcile import Decision, Observed, decide
from spotrain_operator.simulate.costs import Costs
from spotrain_operator.simulate.market import AGENT_NOTICE_KIND, ANY, Market, MarketEvent
from spotrain_operator.simulate.policies import CAPACITY_LABEL, FIXED_INTERVAL_S, POOL_LABEL, Policy, job_spec
from spotrain_protocol import TrainerStatus, envvars
from spotrain_trainer.interval import IntervalPolicy
from spotrain_trainer.notice import second_save_fits

EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
JOB = JobRef("simulated", "simulate", "5e7a1d00-0000-4000-8000-000000000000")
RESYNC_S = 10.0  # the operator's --resync default
RENDEZVOUS_START_S = 1.0  # the store pod's container start (small, on an existing on-demand node)


@dataclass
class Interruption:
    """A market event that hit nodes running the job's workers."""

    time_s: float
    pool: str
    zone: str
    nodes_hit: int
    notice_s: float
    lost_node_s: float = 0.0  # work rolled back until the next interruption
    resumed_s: float | None = None  # training again (any world size) this long after the event

    def to_json(self, step_node_s: float) -> dict[str, Any]:
        return {"time_s": round(self.time_s, 1), "pool": self.pool, "zone": self.zone, "nodes_hit": self.nodes_hit,
                "notice_s": self.notice_s, "lost_steps": round(self.lost_node_s / step_node_s, 1),
                "resumed_after_s": None if self.resumed_s is None else round(self.resumed_s, 1)}


@dataclass
class RunResult:
    policy: str
    market: str
    nodes: int
    completed: bool
    elapsed_s: float
    work_node_s: float
    committed_node_s: float
    paid_node_s: float
    cost: float
    step_node_s: float
    rolled_back_node_s: float
    interruptions: list[Interruption]
    world: list[tuple[float, int]]
    paid_by_pool: dict[str, float]
    breakdown: dict[str, float]
    restarts: dict[str, int]
    status: dict[str, Any]
    events: Counter[str]
    reconciles: int

    @property
    def goodput(self) -> float:
        """Committed useful node-seconds / paid node-seconds."""
        return self.committed_node_s / self.paid_node_s if self.paid_node_s else 0.0

    @property
    def committed_steps(self) -> float:
        return self.committed_node_s / self.step_node_s


@dataclass
class _Pod:
    name: str
    role: str
    pool: str
    serial: int
    mtbf_s: float | None
    bound_at: float | None = None
    node: str | None = None
    running: bool = False
    alive: bool = False  # its processes run (an agent is up)
    deleting: bool = False
    ended_at: float | None = None  # stops being paid for


class Simulation:
    def __init__(self, market: Market, policy: Policy, trace: list[MarketEvent], costs: Costs, *, nodes: int,
                 work_hours: float, max_hours: float):
        self.market = market
        self.policy = policy
        self.costs = costs.scaled()
        self.nodes_target = nodes
        self.spec = job_spec(policy, market, nodes)
        self.trace = sorted(trace)
        self.work = nodes * work_hours * 3600.0  # node-seconds of useful work to do
        self.step_node_s = nodes * self.costs.step_s
        self.limit = max_hours * 3600.0
        self.t = 0.0
        self.queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = itertools.count()
        # The simulated API server: manifests, plus the views built from them (rebuilt when a manifest changes).
        self.node_bodies: dict[str, dict[str, Any]] = {}
        self.pod_bodies: dict[str, dict[str, Any]] = {}
        self.node_views: dict[str, NodeView] = {}
        self.pod_views: dict[str, PodView] = {}
        self.pods: dict[str, _Pod] = {}
        self.node_pool: dict[str, tuple[str, str]] = {}
        self.doomed: set[str] = set()
        self.node_serial = itertools.count()
        self.status_body: dict[str, Any] = {}
        self.reconcile_at: float | None = None
        self.reconciles = 0
        self.draining = False
        self.events: Counter[str] = Counter()
        self.interruptions: list[Interruption] = []
        self.world: list[tuple[float, int]] = [(0.0, 0)]
        # The trainers.
        self.state = "idle"  # idle | forming | training | stopping | stopped | broken | done
        self.members: set[str] = set()
        self.epoch = 0
        self.progress = 0.0
        self.committed = 0.0
        self.rolled_back = 0.0
        self.mark = 0.0  # progress counted up to here
        self.stall_until = 0.0
        self.inflight: tuple[float, float] | None = None  # (progress saved, durable at)
        self.round_closes = 0.0
        self.handled_request: str | None = None
        self.pending_request: str | None = None
        self.interval: IntervalPolicy | None = None
        self.last_checkpoint_start = 0.0
        self.tokens: Counter[str] = Counter()
        self.restart_pending = False
        self.stopping_until = 0.0
        self.departed = False  # the group being stopped lost a peer (its round waits out the peer's heartbeats)
        self.request_deadline: dict[str, float] = {}
        self.notice_deadline: float | None = None  # of the last request made durable
        self.done_at: float | None = None
        self.accounted_to = 0.0
        self.breakdown: dict[str, float] = {}  # paid node-seconds by what they were spent on
        self.restarts: Counter[str] = Counter()  # worker group restarts by cause
        self.rendezvous_id: str | None = None  # where the agents were last told the store is (a planned move)

    # -- the event queue ------------------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.queue, (max(t, self.t), next(self.seq), fn, args))

    def token(self, name: str) -> int:
        self.tokens[name] += 1
        return self.tokens[name]

    def run(self) -> RunResult:
        self._create_nodes()
        for event in self.trace:
            self.at(event.time_s, self._market_event, event)
        self.poke(0.0)
        while self.queue and self.state != "done":
            t, _, fn, args = heapq.heappop(self.queue)
            if t > self.limit:
                break
            self._account(t)
            self.t = t
            fn(*args)
        if self.done_at is not None:
            self._account(self.done_at)
        end = self.done_at if self.done_at is not None else min(self.t, self.limit)
        paid: dict[str, float] = {}
        for pod in self.pods.values():
            if pod.role == "worker" and pod.bound_at is not None:
                until = pod.ended_at if pod.ended_at is not None else end
                paid[pod.pool] = paid.get(pod.pool, 0.0) + max(0.0, min(until, end) - pod.bound_at)
        prices = {p.name: p.hourly_price or 0.0 for p in self.spec.pools}
        cost = sum(seconds / 3600.0 * prices.get(pool, 0.0) for pool, seconds in paid.items())
        return RunResult(
            policy=self.policy.name, market=self.market.name, nodes=self.nodes_target,
            completed=self.done_at is not None, elapsed_s=end, work_node_s=self.work,
            committed_node_s=self.committed, paid_node_s=sum(paid.values()), cost=cost,
            step_node_s=self.step_node_s, rolled_back_node_s=self.rolled_back, interruptions=self.interruptions,
            world=self.world, paid_by_pool=paid, breakdown=self._breakdown(), restarts=dict(self.restarts),
            status=self.status_body, events=self.events, reconciles=self.reconciles)

    def _account(self, until: float) -> None:
        """Splits the paid node-seconds since the last event by what the nodes did (nothing changes between
        events): starting, training, stalled by a checkpoint, restarting (stop, rendezvous, restore), waiting."""
        span = until - self.accounted_to
        if span <= 0:
            return
        start = self.accounted_to
        self.accounted_to = until
        stalled = max(0.0, min(until, self.stall_until) - start) if self.state == "training" else 0.0
        for pod in self.pods.values():
            if pod.role != "worker" or pod.bound_at is None or pod.ended_at is not None:
                continue
            if not pod.running:
                self._spent("pod_start", span)
            elif pod.name in self.members and self.state == "training":
                self._spent("training", span - stalled)
                self._spent("checkpoint_stall", stalled)
            elif pod.name in self.members or self.state in ("stopped", "broken"):
                self._spent("restarting", span)
            else:
                self._spent("waiting", span)

    def _spent(self, what: str, seconds: float) -> None:
        self.breakdown[what] = self.breakdown.get(what, 0.0) + seconds

    def _breakdown(self) -> dict[str, float]:
        out = dict(self.breakdown)
        out["training"] = out.get("training", 0.0) - self.rolled_back
        out["rolled_back"] = self.rolled_back
        return out

    # -- the cluster --------------------------------------------------------------------------------------

    def _create_nodes(self) -> None:
        for sp in self.market.spot_pools:
            for zone in self.market.zones:
                for _ in range(sp.nodes_per_zone):
                    self._add_node(sp.name, zone, "spot")
        for zone in self.market.zones:
            for _ in range(self.market.on_demand_nodes_per_zone + 1):  # one more for the rendezvous store
                self._add_node(self.market.on_demand_pool, zone, "on-demand")

    def _add_node(self, pool: str, zone: str, capacity_type: str) -> None:
        name = f"{pool}-{zone}-{next(self.node_serial)}"
        self.node_pool[name] = (pool, zone)
        self._set_node(name, {
            "metadata": {"name": name, "uid": f"{name}-uid", "annotations": {},
                         "labels": {POOL_LABEL: pool, wk.ZONE: zone, wk.HOSTNAME: name, CAPACITY_LABEL: capacity_type}},
            "spec": {"taints": [], "providerID": f"sim:///{zone}/{name}"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
        })

    def _set_node(self, name: str, body: dict[str, Any]) -> None:
        self.node_bodies[name] = body
        self.node_views[name] = NodeView.from_body(body)

    def _set_pod(self, name: str, body: dict[str, Any]) -> None:
        self.pod_bodies[name] = body
        self.pod_views[name] = PodView.from_body(body)

    def _workers_on(self, node: str) -> list[_Pod]:
        return [p for p in self.pods.values() if p.node == node and p.role == "worker" and p.ended_at is None]

    def _market_event(self, event: MarketEvent) -> None:
        pools = [p.name for p in self.market.spot_pools] if event.pool == ANY else [event.pool]
        zones = list(self.market.zones) if event.zone == ANY else [event.zone]
        if event.gained:
            capacity = "on-demand" if event.pool == self.market.on_demand_pool else "spot"
            for i in range(event.gained):
                self._add_node(pools[i % len(pools)], zones[i % len(zones)], capacity)
        if event.lost:
            candidates = [n for n, pz in self.node_pool.items()
                          if pz[0] in pools and pz[1] in zones and n in self.node_bodies and n not in self.doomed]
            # The hazard is per node the job runs on: an event takes the job's nodes first, then idle capacity.
            victims = sorted(candidates, key=lambda n: (not self._workers_on(n), n))[: event.lost]
            notice = self.market.notice_s if event.notice_s is None else event.notice_s
            hit = [n for n in victims if self._workers_on(n)]
            if hit:
                self.interruptions.append(Interruption(self.t, event.pool, event.zone, len(hit), notice))
            for node in victims:
                self.doomed.add(node)
                if notice > 0:
                    self._notice(node, notice)
                    self.at(self.t + notice, self._node_gone, node)
                else:
                    self._node_gone(node)
        self._bind_pending()
        self.poke()

    def _notice(self, node: str, notice: float) -> None:
        """What spotrain-agent does on a preemption notice: taint the node, annotate the deadline."""
        body = self.node_bodies[node]
        body["spec"]["taints"].append({"key": wk.AGENT_INTERRUPTION_TAINT, "value": AGENT_NOTICE_KIND[
            self.market.cloud], "effect": "NoSchedule"})
        body["metadata"]["annotations"][wk.AGENT_DEADLINE_ANNOTATION] = format_time(self.now(self.t + notice))
        self._set_node(node, body)

    def _node_gone(self, node: str) -> None:
        if node not in self.node_bodies:
            return
        del self.node_bodies[node]
        del self.node_views[node]
        for pod in [p for p in self.pods.values() if p.node == node and p.ended_at is None]:
            pod.ended_at = self.t  # the instance is gone: nothing is paid for any more, the processes died
            if pod.alive:
                self._process_died(pod.name)
        self.poke()

    def _bind_pending(self) -> None:
        taken = {p.node for p in self.pods.values() if p.role == "worker" and p.node and p.ended_at is None}
        for name, body in self.pod_bodies.items():
            pod = self.pods[name]
            if pod.node or pod.deleting:
                continue
            spec = body["spec"]
            selector = spec.get("nodeSelector") or {}
            tolerations = spec.get("tolerations") or []
            free = sorted(n for n, view in self.node_views.items()
                          if (pod.role != "worker" or n not in taken)
                          and all(view.labels.get(k) == v for k, v in selector.items())
                          and node_accepts(view, tolerations))
            status = body["status"]
            if not free:
                if not status.get("conditions"):
                    status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                             "lastTransitionTime": format_time(self.now(self.t))}]
                    self._set_pod(name, body)
                continue
            node = free[0]
            taken.add(node)
            spec["nodeName"] = node
            status["conditions"] = [{"type": "PodScheduled", "status": "True"}]
            pod.node, pod.bound_at = node, self.t
            self._set_pod(name, body)
            start = self.costs.pod_start_s if pod.role == "worker" else RENDEZVOUS_START_S
            self.at(self.t + start, self._pod_running, name)

    def _pod_running(self, name: str) -> None:
        pod = self.pods.get(name)
        if pod is None or pod.ended_at is not None or pod.deleting or pod.node not in self.node_bodies:
            return
        body = self.pod_bodies[name]
        body["status"].update(phase="Running", podIP=f"10.{pod.serial // 65536 % 256}.{pod.serial // 256 % 256}."
                                                     f"{pod.serial % 256}")
        body["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"},
                                        {"type": "Ready", "status": "True"}]
        self._set_pod(name, body)
        pod.running = pod.alive = True
        if pod.role == "worker":
            self._agent_ready(name)
        self.poke()

    def _remove_pod(self, name: str) -> None:
        pod = self.pods.get(name)
        if pod is None or name not in self.pod_bodies:
            return
        if pod.ended_at is None:
            pod.ended_at = self.t
        if pod.alive:
            self._process_died(name)
        del self.pod_bodies[name]
        del self.pod_views[name]
        self._bind_pending()
        self.poke()

    # -- the operator ---------------------------------------------------------------------------------------

    def now(self, t: float) -> datetime.datetime:
        return EPOCH + datetime.timedelta(seconds=t)

    def poke(self, delay: float | None = None) -> None:
        """The operator hears of a change and reconciles ``delay`` later (its reaction time by default)."""
        when = self.t + (self.costs.operator_reaction_s if delay is None else delay)
        if self.reconcile_at is None or when < self.reconcile_at - 1e-9:
            self.reconcile_at = when
            self.at(when, self._reconcile, when)

    def _trainer_statuses(self) -> dict[str, TrainerStatus | None]:
        """What each worker's ``GET /status`` answers (None: no answer)."""
        status = TrainerStatus(step=int(self.progress // self.step_node_s),
                               checkpoint_step=int(self.committed // self.step_node_s),
                               checkpoint_time=format_time(self.now(self.t)), checkpoint_uri="s3://simulated/job",
                               checkpoint_request_id=self.handled_request, handled_request_id=self.handled_request,
                               pending_request_id=self.pending_request,
                               # the group trains on the store it was last told of once it has re-formed there
                               rendezvous_id=self.rendezvous_id if self.state == "training" else None)
        out: dict[str, TrainerStatus | None] = {}
        for name, pod in self.pods.items():
            if pod.role == "worker" and pod.running and name in self.pod_bodies:
                out[name] = status if pod.alive and pod.ended_at is None else None
        return out

    def _reconcile(self, scheduled: float) -> None:
        if self.reconcile_at is None or abs(scheduled - self.reconcile_at) > 1e-9:
            return  # superseded by an earlier one
        self.reconcile_at = None
        self.reconciles += 1
        # As the operator: the job's status read back from its dict form; trainers probed while a drain waits.
        status = JobStatus.from_body(self.status_body)
        observed = Observed(JOB, 1, self.spec, status, list(self.pod_views.values()), dict(self.node_views),
                            self.now(self.t), self._trainer_statuses() if self.draining else {})
        decision = decide(observed)
        self.draining = decision.draining  # as the operator decides to poll closely
        self.status_body = decision.status
        for action in decision.actions:
            self._apply(action)
        self._schedule_timers(decision)

    def _apply(self, action: act.Action) -> None:
        if isinstance(action, act.CreatePod):
            self._create_pod(action.manifest)
        elif isinstance(action, act.DeletePod | act.EvictPod):
            self._delete_pod(action.name, action.grace_seconds)
        elif isinstance(action, act.RequestCheckpoint):
            self.events["CheckpointRequested"] += 1
            deadline = (parse_time(action.deadline) or EPOCH) - EPOCH
            self._checkpoint_request(action.request_id, deadline.total_seconds())
        elif isinstance(action, act.MoveRendezvous):
            # The agents re-join the moved store in their pods: a restart of the group, as for a join.
            if action.rendezvous_id != self.rendezvous_id:
                self.rendezvous_id = action.rendezvous_id
                if self.state == "training":
                    self.restarts["store_move"] += 1
                    self._stop_group(departed=False)
        elif isinstance(action, act.LabelPod):
            body = self.pod_bodies[action.name]
            meta = body["metadata"]
            self._set_pod(action.name, {**body, "metadata": {**meta, "labels": {**meta["labels"],
                                                                                **dict(action.labels)}}})
        elif isinstance(action, act.Event):
            self.events[action.reason] += 1

    def _schedule_timers(self, decision: Decision) -> None:
        status = JobStatus.from_body(decision.status)
        now = self.now(self.t)
        timers = [status.scale_up_after, *status.cooldowns.values()]
        if status.pending_since and self.spec.fallback:
            timers.append(status.pending_since + datetime.timedelta(seconds=self.spec.fallback.after_seconds))
        margin = datetime.timedelta(seconds=self.spec.termination.safety_margin_seconds)
        timers += [d.deadline - margin for d in status.drains.values()]
        future = [(t - EPOCH).total_seconds() for t in timers if t is not None and t > now]
        if future:
            self.poke(max(0.0, min(future) - self.t + 1e-3))
        live = [p for p in self.pods.values() if p.role == "worker" and p.ended_at is None]
        settled = (decision.status.get("readyWorkers") == decision.status.get("desiredWorkers")
                   and all(p.running for p in live) and not status.pending_since and not status.scale_up_after)
        if self.draining:
            self.poke(self.costs.operator_poll_s)
        elif not settled:
            self.poke(RESYNC_S)

    def _create_pod(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        name = meta["name"]
        if name in self.pod_bodies:
            return
        labels = meta.get("labels") or {}
        env = {e["name"]: e.get("value") for e in manifest["spec"]["containers"][0].get("env") or []}
        mtbf = env.get(envvars.MTBF_SECONDS)
        body = {**manifest, "metadata": {**meta, "creationTimestamp": format_time(self.now(self.t))},
                "status": {"phase": "Pending"}}
        self.pods[name] = _Pod(name, labels.get(wk.ROLE_LABEL, ""), labels.get(wk.POOL_LABEL, ""),
                               int(labels.get(wk.SERIAL_LABEL, 0)), float(mtbf) if mtbf else None)
        self._set_pod(name, body)
        self._bind_pending()

    def _delete_pod(self, name: str, grace: int | None) -> None:
        pod = self.pods.get(name)
        if pod is None or name not in self.pod_bodies or pod.deleting:
            return
        if not pod.alive or grace == 0:
            self._remove_pod(name)
            return
        pod.deleting = True
        body = self.pod_bodies[name]
        body["metadata"]["deletionTimestamp"] = format_time(self.now(self.t))
        self._set_pod(name, body)
        exits = self._sigterm(name)
        # As the kubelet: the grace the deletion asks for, else the pod's terminationGracePeriodSeconds (30 s
        # when the pod does not say), then SIGKILL.
        limit = self.t + (grace if grace is not None else body["spec"].get("terminationGracePeriodSeconds", 30))
        self.at(min(exits, limit), self._remove_pod, name)

    # -- the trainers ---------------------------------------------------------------------------------------

    def _world(self) -> int:
        return len(self.members) if self.state == "training" else 0

    def _record_world(self) -> None:
        size = self._world()
        if self.world[-1][1] != size:
            self.world.append((self.t, size))

    def _advance(self) -> None:
        """Counts the progress made since the last call (none while stalled by a checkpoint)."""
        if self.state == "training":
            start = max(self.mark, min(self.stall_until, self.t))
            self.progress += len(self.members) * max(0.0, self.t - start)
        self.mark = self.t

    def _agents(self) -> list[_Pod]:
        """Agents waiting in or running a rendezvous: running, alive, not being stopped."""
        return sorted((p for p in self.pods.values() if p.role == "worker" and p.alive and not p.deleting),
                      key=lambda p: p.serial)

    def _agent_ready(self, name: str) -> None:
        if self.state == "idle":
            self._form(0.0)
        elif self.state == "forming" and self.t < self.round_closes and len(self.members) < self.spec.max_nodes:
            self.members.add(name)
        elif self.state == "training":
            self._join_soon()

    def _join_soon(self) -> None:
        waiting = [p for p in self._agents() if p.name not in self.members]
        if waiting and len(self.members) < self.spec.max_nodes and not self.restart_pending:
            self.restart_pending = True
            self.at(self.t + self.costs.join_detect_s, self._join_restart, self.epoch)

    def _join_restart(self, epoch: int) -> None:
        self.restart_pending = False
        if epoch != self.epoch or self.state != "training":
            return
        self.restarts["join"] += 1
        self._stop_group(departed=False)

    def _stop_group(self, departed: bool) -> float:
        """Every worker stops (SIGTERM); returns when their processes have exited. spotrain's workers first take a
        checkpoint (after any regular one still being written); it counts only once durable, and a peer lost
        before that fails it. Other trainers lose what is not committed. Then the survivors re-form."""
        self._advance()
        self.departed = departed
        if not self.policy.checkpoint_on_sigterm:
            self._roll_back()
            self._halt()
            self.at(self.t + self.costs.stop_s, self._form_after_stop, self.epoch)
            return self.t + self.costs.stop_s
        start = max(self.t, self.stall_until, self.inflight[1] if self.inflight else 0.0)
        took = self.costs.notice_checkpoint_s if self.progress > self.committed else 0.0
        if took and self.notice_deadline is not None and start < self.notice_deadline and not second_save_fits(
                deadline_unix=self.notice_deadline, now_unix=start, estimate_seconds=took):
            # After a requested checkpoint, the trainer takes a second save on SIGTERM only when it surely fits
            # before the request's deadline; otherwise the workers exit and resume from the requested checkpoint.
            self._roll_back()
            self._halt()
            self.at(self.t + self.costs.stop_s, self._form_after_stop, self.epoch)
            return self.t + self.costs.stop_s
        self.state = "stopping"
        self._record_world()
        self.at(start + took, self._stopped, self.epoch, self.progress)
        self.stopping_until = start + took + self.costs.stop_s
        return self.stopping_until

    def _stopped(self, epoch: int, saved: float) -> None:
        if epoch != self.epoch or self.state != "stopping":
            return
        self.committed = max(self.committed, saved)
        self._halt()
        self.at(self.t + self.costs.stop_s, self._form_after_stop, self.epoch)

    def _form_after_stop(self, epoch: int) -> None:
        if epoch == self.epoch and self.state == "stopped":
            self._form(0.0, departed=self.departed)

    def _halt(self) -> None:
        self.epoch += 1
        self.state = "stopped"
        self.members = set()
        self.inflight = None
        self.mark = self.t
        self.restart_pending = False
        self._record_world()

    def _roll_back(self) -> None:
        lost = self.progress - self.committed
        if lost > 0:
            self.rolled_back += lost
            if self.interruptions:
                self.interruptions[-1].lost_node_s += lost
        self.progress = self.committed

    def _form(self, delay: float, departed: bool = False) -> None:
        """The agents form a rendezvous round; the workers then start, restore and take their first step. A round
        that a peer left first waits out that peer's heartbeats (``departed``)."""
        agents = self._agents()
        self.epoch += 1
        if len(agents) < self.spec.min_nodes:
            self.state, self.members = "idle", set()
            self._record_world()
            return
        self.state = "forming"
        self.notice_deadline = None  # new worker processes: no request handled yet
        self.members = {p.name for p in agents[: self.spec.max_nodes]}
        self.progress = self.committed  # every worker restores the last committed checkpoint
        wait = self.costs.rendezvous_s + (self.costs.departed_peer_s if departed else 0.0)
        self.round_closes = self.t + delay + wait
        c = self.costs
        self.at(self.round_closes + c.restart_s + c.restore_s + c.first_step_s, self._resume, self.epoch)
        self._record_world()

    def _resume(self, epoch: int) -> None:
        if epoch != self.epoch or self.state != "forming":
            return
        self.state = "training"
        self.mark = self.stall_until = self.t
        for i in reversed(self.interruptions):
            if i.resumed_s is not None:
                break
            i.resumed_s = self.t - i.time_s
        if self.policy.acts_on_notice:
            ck = self.spec.checkpoint
            mtbf = min((m for m in (self.pods[name].mtbf_s for name in self.members) if m), default=None)
            self.interval = IntervalPolicy("auto", None, ck.min_interval_seconds, ck.max_interval_seconds,
                                           **({"mtbf_seconds": mtbf} if mtbf else {}))
        self.last_checkpoint_start = self.t
        self._schedule_regular()
        self._schedule_finish()
        self._record_world()
        if self.pending_request:
            self._take_requested_checkpoint(self.pending_request)
        self._join_soon()

    def _interval_s(self) -> float:
        return self.interval.interval_seconds() if self.interval else FIXED_INTERVAL_S

    def _schedule_regular(self) -> None:
        self.at(self.last_checkpoint_start + self._interval_s(), self._regular_checkpoint, self.epoch,
                self.token("regular"))

    def _regular_checkpoint(self, epoch: int, token: int) -> None:
        if epoch != self.epoch or token != self.tokens["regular"] or self.state != "training":
            return
        self._advance()
        if self.t < self.stall_until or self.inflight:
            self.at(max(self.stall_until, self.inflight[1] if self.inflight else 0.0), self._regular_checkpoint,
                    epoch, token)
            return
        if self.progress >= self.work - 1e-6:
            return  # the last step is done: the final checkpoint follows, not a regular one
        self.last_checkpoint_start = self.t
        if self.progress > self.committed:
            if self.interval is not None:  # spotrain: asynchronous, the Young/Daly interval
                c = self.costs
                self.stall_until = self.t + c.checkpoint_stall_s
                self.inflight = (self.progress, self.t + c.checkpoint_durable_s)
                self.at(self.t + c.checkpoint_durable_s, self._durable, epoch, self.progress)
                self.interval.observe(c.checkpoint_stall_s, c.checkpoint_durable_s)
            else:
                self.stall_until = self.t + self.costs.checkpoint_sync_s
                self.at(self.stall_until, self._durable, epoch, self.progress)
        self._schedule_regular()
        self._schedule_finish()

    def _durable(self, epoch: int, saved: float, request_id: str | None = None) -> None:
        if epoch != self.epoch:
            return  # the workers that were writing it died
        self.committed = max(self.committed, saved)
        if self.inflight and self.inflight[0] <= saved:
            self.inflight = None
        if request_id:
            self.handled_request = request_id
            self.notice_deadline = self.request_deadline.get(request_id)
            if self.pending_request == request_id:
                self.pending_request = None
            self.poke(self.costs.operator_poll_s)

    def _checkpoint_request(self, request_id: str, deadline_s: float) -> None:
        """POST /checkpoint: at the next step boundary every rank saves the same step synchronously."""
        if not self.policy.acts_on_notice or request_id in (self.pending_request, self.handled_request):
            return  # the same request again is a no-op, as on a real worker
        self.request_deadline[request_id] = deadline_s
        if self.state != "training":
            self.pending_request = request_id  # handled once training runs again
            return
        self._take_requested_checkpoint(request_id)

    def _take_requested_checkpoint(self, request_id: str) -> None:
        self._advance()
        # A regular checkpoint still being written is waited for first; training stops meanwhile.
        start = max(self.t, self.stall_until, self.inflight[1] if self.inflight else 0.0)
        took = self.costs.notice_checkpoint_s if self.progress > self.committed else 0.0
        self.stall_until = start + took
        self.pending_request = request_id
        self.at(start + took, self._durable, self.epoch, self.progress, request_id)
        self._schedule_finish()

    def _sigterm(self, name: str) -> float:
        """A pod is stopped gracefully; returns when its processes have exited."""
        if name in self.members:
            if self.state == "training":
                self.restarts["worker stopped"] += 1
                return self._stop_group(departed=True)
            if self.state == "stopping":
                return self.stopping_until
            if self.state == "forming":
                self._halt()
                self._form(self.costs.stop_s, departed=True)
        return self.t + self.costs.stop_s

    def _process_died(self, name: str) -> None:
        """A pod's processes died without warning (its node vanished, or it was killed)."""
        pod = self.pods[name]
        pod.alive = False
        if name not in self.members or self.state not in ("training", "forming", "stopping"):
            return
        self._advance()
        self.epoch += 1  # checkpoints in flight are lost with the peer
        self.state = "broken"  # the survivors' collectives hang until the failure is detected
        self.members.discard(name)
        self.inflight = None
        self._record_world()
        self.at(self.t + self.costs.failure_detect_s, self._failure_detected, self.epoch)

    def _failure_detected(self, epoch: int) -> None:
        if epoch != self.epoch or self.state != "broken":
            return
        self.restarts["peer lost"] += 1
        self._roll_back()
        self._halt()
        self._form(0.0, departed=True)

    def _schedule_finish(self) -> None:
        if self.state != "training" or not self.members:
            return
        self._advance()
        remaining = max(0.0, self.work - self.progress)
        when = max(self.t, self.stall_until) + remaining / len(self.members)
        self.at(when, self._finish, self.epoch, self.token("finish"))

    def _finish(self, epoch: int, token: int) -> None:
        if epoch != self.epoch or token != self.tokens["finish"] or self.state != "training":
            return
        self._advance()
        if self.progress < self.work - 1e-6:
            self._schedule_finish()
            return
        # The final checkpoint (synchronous) and the completion marker; then every pod ends.
        self.progress = min(self.progress, self.work)
        self.done_at = max(self.t, self.stall_until) + self.costs.checkpoint_sync_s
        self.committed = self.progress
        self.state = "done"
        self.t = self.done_at
        self._record_world()
        self.world.append((self.t, 0))


def simulate(market: Market, policy: Policy, trace: list[MarketEvent], costs: Costs, *, work_hours: float,
             max_hours: float, nodes: int | None = None) -> RunResult:
    """Runs ``policy`` over ``trace`` until ``work_hours`` of full-size work are committed or ``max_hours`` pass."""
    return Simulation(market, policy, trace, costs, nodes=nodes or market.job_nodes, work_hours=work_hours,
                      max_hours=max_hours).run()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
