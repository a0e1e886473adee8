"""kopf handlers for SpotTrainingJobs: read the world, call the core, apply its actions.

Each job has a daemon that reconciles it whenever something relevant changes (its object, its pods, any Node)
and at least every ``resync`` seconds. Events only wake the daemon; the reconcile itself always reads the job
and its pods fresh from the API server, so it never acts on a stale view of its own writes.

The event and index handlers are coroutines on purpose: kopf runs plain functions in a thread pool, and an
``asyncio.Event`` set from another thread may not wake its waiter until the loop stirs for some other reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from spotrain_operator import health, metrics
from spotrain_operator import wellknown as wk
from spotrain_operator.api import SOURCE_NAMES, SpecError, parse_spec
from spotrain_operator.cluster import Cluster, Conflict
from spotrain_operator.control_auth import ControlKey
from spotrain_operator.controllers import network
from spotrain_operator.controllers.capacity import CapacityIndexes, unservable
from spotrain_operator.core import actions as act
from spotrain_operator.core.model import JobStatus, NodeView, PodView, format_time
from spotrain_operator.core.network import NetworkPolicyConfig
from spotrain_operator.core.pods import JobRef, owning_job
from spotrain_operator.core.provisioning import PROBE_ROLE
from spotrain_operator.core.reconcile import Decision, Observed, decide
from spotrain_operator.core.termination import node_notice
from spotrain_operator.trainer_client import TrainerClient
from spotrain_protocol import CONTROL_PORT, RendezvousMove, TrainerStatus

log = logging.getLogger("spotrain.jobs")
REPORTER = "spotrain-operator"
TRAINER_POLL_SECONDS = 30.0
DRAIN_POLL_SECONDS = 0.5
# A reconcile that keeps failing (an API error, a 422 on something it creates) backs off exponentially with
# jitter, up to this cap; while a drain is in flight the cap is DRAIN_BACKOFF_CAP, since the deadline will not wait.
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 60.0
DRAIN_BACKOFF_CAP_SECONDS = 2.0
# A status write that loses to a concurrent one is decided again from a fresh read, at most this many times a pass.
CONFLICT_RETRIES = 3


@dataclass
class Runtime:
    """Connections and wake-ups shared by the handlers; no job state lives here."""

    cluster: Cluster
    trainers: TrainerClient = field(default_factory=lambda: TrainerClient(CONTROL_PORT))
    # Derives each job's control-endpoint token (control_auth); None: workers run without one.
    control_key: ControlKey | None = None
    # What each job's NetworkPolicy admits (core/network.py); None: the operator makes none.
    network_policy: NetworkPolicyConfig | None = None
    resync_seconds: float = 10.0
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    last_trainer_poll: dict[tuple[str, str], float] = field(default_factory=dict)
    # What the API refused in a job's last pass, for the next pass to report on the job.
    refused: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # The last view of each node, to tell a change that matters to placement from a status heartbeat.
    node_views: dict[str, NodeView] = field(default_factory=dict)

    def wake(self, key: tuple[str, str]) -> None:
        event = self.wakeups.get(key)
        if event:
            event.set()

    def wake_all(self) -> None:
        for event in self.wakeups.values():
            event.set()


@kopf.index("nodes")
async def nodes_by_name(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeView]:
    return {name: NodeView.from_body(body)}


@kopf.index("pods", labels={wk.JOB_LABEL: kopf.PRESENT})
async def jobs_by_node(spec: kopf.Spec, namespace: str | None, body: kopf.Body,
                       **_: Any) -> dict[str, tuple[str, str]] | None:
    node, job = spec.get("nodeName"), owning_job(body["metadata"])
    return {node: (namespace or "", job)} if node and job else None


@kopf.on.event("nodes")
async def node_changed(type: str, name: str, body: kopf.Body, memo: Runtime, **kwargs: Any) -> None:
    """A notice or a loss concerns the jobs with pods on the node; a node that could take a new worker, and has
    just changed, concerns every job (one may be waiting for capacity). Heartbeats wake nobody: with 500 nodes
    they would keep every job reconciling."""
    rt = memo
    index: kopf.Index[str, tuple[str, str]] = kwargs["jobs_by_node"]
    for key in set(index.get(name, [])):
        rt.wake(key)
    if type == "DELETED":
        rt.node_views.pop(name, None)
        return
    view = NodeView.from_body(body)
    previous, rt.node_views[name] = rt.node_views.get(name), view
    now = datetime.datetime.now(datetime.UTC)
    usable = view.ready and not view.unschedulable and node_notice(view, now, SOURCE_NAMES, True) is None
    if usable and view != previous:
        rt.wake_all()


@kopf.on.event("pods", labels={wk.JOB_LABEL: kopf.PRESENT})
async def pod_changed(namespace: str | None, body: kopf.Body, memo: Runtime, **_: Any) -> None:
    # The job's name from the owner reference: the job label holds a hash of a name over 63 characters.
    job = owning_job(body["metadata"])
    if job:
        memo.wake((namespace or "", job))


@kopf.on.event(wk.GROUP, wk.VERSION, wk.PLURAL)
async def job_changed(namespace: str | None, name: str, memo: Runtime, **_: Any) -> None:
    memo.wake((namespace or "", name))


@kopf.daemon(wk.GROUP, wk.VERSION, wk.PLURAL, cancellation_timeout=10.0)
async def run_job(namespace: str | None, name: str, stopped: kopf.DaemonStopped, memo: Runtime,
                  **kwargs: Any) -> None:
    nodes_by_name: kopf.Index[str, NodeView] = kwargs["nodes_by_name"]  # kopf passes indexes by name
    capacity = CapacityIndexes.from_kwargs(kwargs)
    rt = memo
    namespace = namespace or ""
    key = (namespace, name)
    wakeup = rt.wakeups.setdefault(key, asyncio.Event())
    # No wait for the node index here: kopf starts no daemon before every index has read its initial list
    # (kopf/_core/reactor/queueing.py drops the resource's "indexed" toggle on the LISTED bookmark, and
    # processing.py waits for operator_indexed before any non-index handler), whatever the cluster's size is now.
    failures = 0
    draining = False
    try:
        while not stopped:
            wakeup.clear()
            try:
                draining = await reconcile(rt, namespace, name, nodes_by_name, capacity, kwargs.get(network.INDEX))
                failures = 0
                rt.refused.pop(key, None)
            except Exception as e:  # any failure: logged, reported on the job where possible, retried with backoff
                failures += 1
                metrics.RECONCILES.labels("failed").inc()
                if isinstance(e, ApplyFailed):
                    rt.refused[key] = e.refused
                draining = getattr(e, "draining", draining)
                log.warning("reconcile failed (attempt %d): %s", failures, e, extra={"job": f"{namespace}/{name}"},
                            exc_info=failures == 1)
            # Liveness: this daemon completed a pass, failed or not (a job the API keeps refusing is no reason to
            # restart the operator); one stuck inside a pass stops beating.
            health.heartbeat(f"job/{namespace}/{name}", max_age=BACKOFF_CAP_SECONDS + 6 * rt.resync_seconds)
            if failures:
                await stopped.wait(backoff_seconds(failures, draining, random.uniform(0.5, 1.0)))
                continue
            # A drain waits on the workers' checkpoint, which no Kubernetes event announces: poll it closely.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=DRAIN_POLL_SECONDS if draining else rt.resync_seconds)
    finally:
        rt.wakeups.pop(key, None)
        rt.last_trainer_poll.pop(key, None)
        rt.refused.pop(key, None)
        health.LIVENESS.forget(f"job/{namespace}/{name}")
        metrics.forget_job(namespace, name)


def _nodes(index: kopf.Index[str, NodeView]) -> dict[str, NodeView]:
    return {name: next(iter(views)) for name, views in index.items() if views}


def backoff_seconds(failures: int, draining: bool, jitter: float) -> float:
    """How long a job whose reconcile failed ``failures`` times in a row waits before the next try: doubling from
    BACKOFF_BASE_SECONDS, capped, times ``jitter`` (0.5..1, so that jobs failing together spread out). Hand-written
    rather than taken from a retry library: the wait must also end early when the daemon is stopped."""
    cap = DRAIN_BACKOFF_CAP_SECONDS if draining else BACKOFF_CAP_SECONDS
    return min(cap, BACKOFF_BASE_SECONDS * 2 ** min(failures - 1, 16)) * jitter


class ApplyFailed(Exception):
    """Some actions of a decision were refused; the others were applied. Carries whether a drain is in flight."""

    def __init__(self, refused: list[str], draining: bool):
        super().__init__("; ".join(refused))
        self.refused = tuple(refused)
        self.draining = draining


async def reconcile(rt: Runtime, namespace: str, name: str, nodes_index: kopf.Index[str, NodeView],
                    capacity: CapacityIndexes | None = None, policies: network.PolicyIndex | None = None) -> bool:
    """One level-triggered pass: read, decide, write the status with the resourceVersion read (deciding again from a
    fresh read if someone wrote first), then act. Returns True while a drain waits on its checkpoint."""
    for _ in range(CONFLICT_RETRIES):
        try:
            return await _reconcile_once(rt, namespace, name, nodes_index, capacity, policies)
        except Conflict:
            continue
    raise Conflict(f"{namespace}/{name}: the status changed under every one of {CONFLICT_RETRIES} writes")


async def _reconcile_once(rt: Runtime, namespace: str, name: str, nodes_index: kopf.Index[str, NodeView],
                          capacity: CapacityIndexes | None = None, policies: network.PolicyIndex | None = None) -> bool:
    started = time.perf_counter()
    job = await asyncio.to_thread(rt.cluster.get_job, namespace, name)
    if job is None or job["metadata"].get("deletionTimestamp"):
        return False
    meta = job["metadata"]
    ref = JobRef(name, namespace, meta["uid"], rt.control_key.token_for(meta["uid"]) if rt.control_key else None)
    status = JobStatus.from_body(job.get("status"))
    try:
        pricing = None
        config_map = job["spec"].get("placement", {}).get("pricingConfigMap")
        if config_map:
            pricing = await asyncio.to_thread(rt.cluster.read_config_map, namespace, config_map)
            if pricing is None:
                raise SpecError("spec.placement.pricingConfigMap", f"ConfigMap {config_map!r} does not exist",
                                "create it in the job's namespace or remove the field")
        spec = parse_spec(job["spec"], pricing)
    except (SpecError, KeyError, ValueError, TypeError, OverflowError) as e:
        await _report_invalid(rt, job, str(e) if isinstance(e, SpecError) else f"{type(e).__name__}: {e}")
        metrics.RECONCILES.labels("invalid").inc()
        return False
    pods = [PodView.from_body(p) for p in await asyncio.to_thread(rt.cluster.list_job_pods, namespace, name)]
    now = datetime.datetime.now(datetime.UTC)
    trainers = await _probe_trainers(rt, (namespace, name), status, pods, ref.control_token)
    nodes = await _nodes_of(rt, nodes_index, pods)
    found = capacity.observe() if capacity else {}  # NodePools and the room on each node
    cannot_serve = await asyncio.to_thread(unservable, rt.cluster, namespace, spec, pods, found.get("node_pools", {}))
    observed = Observed(ref, int(meta.get("generation", 0)), spec, status, pods, nodes, now, trainers,
                        refused=rt.refused.get((namespace, name), ()), network_policy=rt.network_policy,
                        network_policy_hash=network.policy_hash(policies, (namespace, name)),
                        unservable=cannot_serve, **found)
    decision = decide(observed)
    _log_decision(namespace, name, decision)
    await apply(rt, job, decision, observed, started)
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    metrics.RECONCILES.labels("ok").inc()
    _export(observed, decision.status)
    return decision.draining


async def _nodes_of(rt: Runtime, index: kopf.Index[str, NodeView], pods: list[PodView]) -> dict[str, NodeView]:
    """The node index, plus any node a pod is bound to that the index does not hold yet: the index follows a watch
    and can lag a pod that the scheduler just bound to a brand-new node, and the core takes a missing node for a
    deleted one (its pods are force-deleted). A GET settles it; it is needed only while nodes come or go."""
    nodes = _nodes(index)
    for missing in {p.node for p in pods if p.node and p.node not in nodes}:
        body = await asyncio.to_thread(rt.cluster.get_node, missing)
        if body is not None:
            nodes[missing] = NodeView.from_body(body)
    return nodes


def _log_decision(namespace: str, name: str, decision: Decision) -> None:
    """The operator's log says, per job, what it decided and why: one line per event the decision posts (placement,
    rounds, drains, failures), nothing for a quiet pass, so that it stays readable with many jobs."""
    for action in decision.actions:
        if isinstance(action, act.Event):
            level = logging.WARNING if action.type == "Warning" else logging.INFO
            log.log(level, "%s: %s", action.reason, action.message, extra={"job": f"{namespace}/{name}"})


async def _probe_trainers(rt: Runtime, key: tuple[str, str], status: JobStatus,
                          pods: list[PodView], token: str | None) -> dict[str, TrainerStatus | None]:
    """Control endpoints are read while a drain waits on its checkpoint or a store move on the workers re-joining,
    and otherwise now and then for the last checkpoint shown in status."""
    draining = status.awaiting_trainers
    due = time.monotonic() - rt.last_trainer_poll.get(key, 0.0) >= TRAINER_POLL_SECONDS
    if not (draining or due):
        return {}
    rt.last_trainer_poll[key] = time.monotonic()
    targets = [(p.name, p.ip) for p in pods if p.role == "worker" and p.active and p.ip and p.phase == "Running"]
    return await rt.trainers.statuses(targets, token)


async def _report_invalid(rt: Runtime, job: dict[str, Any], message: str) -> None:
    """A SpecInvalid condition and one Event per distinct problem and generation: passes over the same invalid
    spec write nothing and post nothing, and the condition's lastTransitionTime stays when it was first seen."""
    meta = job["metadata"]
    generation = meta.get("generation", 0)
    current = job.get("status") or {}
    previous = next((c for c in current.get("conditions") or [] if c.get("type") == "SpecInvalid"), None)
    if previous and previous.get("status") == "True" and previous.get("message") == message \
            and previous.get("observedGeneration") == generation:
        return
    conditions = [c for c in current.get("conditions") or [] if c.get("type") != "SpecInvalid"]
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == "True" else None
    conditions.append({"type": "SpecInvalid", "status": "True", "reason": "InvalidSpec", "message": message[:1024],
                       "lastTransitionTime": since or format_time(datetime.datetime.now(datetime.UTC)),
                       "observedGeneration": generation})
    await asyncio.to_thread(rt.cluster.replace_status, job, {**current, "conditions": conditions})
    await asyncio.to_thread(rt.cluster.post_event, job, "Warning", "InvalidSpec", message, REPORTER)


async def apply(rt: Runtime, job: dict[str, Any], decision: Decision, observed: Observed,
                started: float) -> None:
    meta = job["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    cluster = rt.cluster
    # A checkpoint request goes out before anything else: every millisecond counts against the notice. Should the
    # status write below then fail, the next pass asks again under a new id: one extra checkpoint, nothing lost.
    requests = [a for a in decision.actions if isinstance(a, act.RequestCheckpoint)]
    for request in requests:
        results = await rt.trainers.request_checkpoints(request.pod_ips, request.request_id, request.reason,
                                                        request.deadline, observed.job.control_token)
        metrics.CHECKPOINT_REQUESTS.labels(namespace, name).inc()
        failed = sorted(p for p, ok in results.items() if not ok)
        if failed:
            log.warning("checkpoint request %s not accepted by %s", request.request_id, ", ".join(failed))
        # Read the endpoints again right away: unreachable doomed workers are evicted without waiting.
        rt.last_trainer_poll.pop((namespace, name), None)
    if requests:
        metrics.NOTICE_TO_REQUEST_SECONDS.observe(time.perf_counter() - started)
    # Then the status, written with the resourceVersion read (a Conflict makes the caller decide again): the pod
    # serials, counted pods and drains it records are what make a repeated or interrupted apply harmless. A job
    # whose status is unchanged is not written.
    conditions = [c for c in decision.status.get("conditions", []) if c.get("type") != "SpecInvalid"]
    status = {**decision.status, "conditions": conditions}
    if status != (job.get("status") or {}):
        await asyncio.to_thread(cluster.replace_status, job, status)
    # Each action on its own: one refused (a 422, a PodDisruptionBudget, a timeout) does not stop the others, and
    # since what was done is read back from the cluster, the next pass decides it again.
    created = removed = 0
    refused: list[str] = []
    for action in decision.actions:
        try:
            match action:
                case act.EnsureObject(manifest) | act.CreatePod(manifest):
                    labels = manifest["metadata"].get("labels") or {}
                    probe = labels.get(wk.ROLE_LABEL) == PROBE_ROLE  # a return-to-spot probe is no rescale
                    if await asyncio.to_thread(cluster.create, manifest) and manifest["kind"] == "Pod" and not probe:
                        created += 1
                        if labels.get(wk.ROLE_LABEL) == "worker" and observed.spec.fallback and \
                                labels[wk.POOL_LABEL] == observed.spec.fallback.pool:
                            metrics.FALLBACKS.labels(namespace, name).inc()
                case act.DeletePod(pod, reason, grace):
                    await asyncio.to_thread(cluster.delete_pod, namespace, pod, grace, reason)
                    removed += 1
                case act.EvictPod(pod, grace, outcome, requested_at):
                    await asyncio.to_thread(cluster.evict_pod, namespace, pod, grace)
                    removed += 1
                    if outcome and requested_at:
                        metrics.record_drain(namespace, name, outcome, (observed.now - requested_at).total_seconds())
                case act.RequestCheckpoint():
                    pass  # sent first, above
                case act.MoveRendezvous(rendezvous_id, endpoint, round_, pod_ips):
                    move = RendezvousMove(id=rendezvous_id, endpoint=endpoint, round=round_)
                    results = await rt.trainers.move_rendezvous(pod_ips, move, observed.job.control_token)
                    if failed := sorted(p for p, ok in results.items() if not ok):
                        log.warning("rendezvous move to round %d not accepted by %s", round_, ", ".join(failed))
                    rt.last_trainer_poll.pop((namespace, name), None)  # see soon that they re-joined
                case act.LabelPod(pod, labels):
                    await asyncio.to_thread(cluster.label_pod, namespace, pod, dict(labels))
                case act.MarkNodeDrained(node):
                    await _mark_drained(cluster, node)
                case act.DeleteJob():
                    await asyncio.to_thread(cluster.delete_job, namespace, name)
                case act.Event(type_, reason, message):
                    await asyncio.to_thread(cluster.post_event, job, type_, reason, message, REPORTER)
        except Exception as e:  # collected and raised below, after the other actions had their turn
            refused.append(f"{type(action).__name__}: {_api_message(e)}")
    if created or removed:
        metrics.RESCALES.labels(namespace, name).inc()
    if refused:
        raise ApplyFailed(refused, decision.draining)


def _api_message(error: Exception) -> str:
    """What the API server said, which names the rule broken (a Pod Security level, a quota), over its reason."""
    try:
        return str(json.loads(getattr(error, "body", None) or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(getattr(error, "reason", None) or error)


async def _mark_drained(cluster: Cluster, node: str) -> None:
    """Marks the node drained (spotrain-agent then acknowledges an Azure Scheduled Event) once no pod of any
    spotrain job is left on it; a job whose own pods are gone, while another's still drain, leaves the mark to
    the last one."""
    left = await asyncio.to_thread(cluster.spotrain_pods_on_node, node)
    if left:
        log.info("node %s not marked drained yet: %s still on it", node, ", ".join(left[:5]), extra={"node": node})
        return
    await asyncio.to_thread(cluster.annotate_node, node, {wk.NODE_DRAINED_ANNOTATION: "true"})


def _export(observed: Observed, status: Mapping[str, Any]) -> None:
    namespace, name = observed.job.namespace, observed.job.name
    cost = status.get("cost") or {}
    metrics.HOURLY_COST.labels(namespace, name).set(float(cost.get("hourly", 0)))
    metrics.SAVING_PERCENT.labels(namespace, name).set(float(cost.get("savingPercent", 0)))
    for pool_zone, count in (status.get("preemptionsByPool") or {}).items():
        before = observed.status.preemptions_by_pool.get(pool_zone, 0)
        if count > before:
            pool, _, zone = pool_zone.partition("/")
            metrics.PREEMPTIONS.labels(namespace, name, pool, zone).inc(count - before)
    metrics.record_job(namespace, name, str(status.get("phase", "")), [
        (w.pool, w.zone, observed.spec.capacity_type(w.pool) or "on-demand")
        for w in observed.pods if w.role == "worker" and w.active and w.phase == "Running"
    ])
