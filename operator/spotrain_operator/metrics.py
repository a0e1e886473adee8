"""Prometheus metrics of the operator.

Every per-job series carries the labels ``namespace`` and ``job`` (the SpotTrainingJob); ``forget_job`` removes
all of them when the job goes away. The chart's ServiceMonitor scrapes with ``honorLabels: true`` so that these
labels, not the target's own ``namespace``/``job``, are what users see.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

PHASES = ("Pending", "Running", "Rescaling", "Waiting", "Suspended", "Succeeded", "Failed")

JOBS = Gauge("spotrain_jobs", "SpotTrainingJobs by phase", ["phase"])
LEADER = Gauge("spotrain_leader", "1 on the operator replica that holds the leader Lease (or runs without one)")
WORKERS = Gauge("spotrain_workers", "Running worker pods", ["namespace", "job", "pool", "zone", "capacity_type"])
JOB_PHASE = Gauge("spotrain_job_phase", "1 for the current phase of a job", ["namespace", "job", "phase"])
RECONCILE_SECONDS = Histogram(
    "spotrain_reconcile_duration_seconds", "Time of one reconcile of a job",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILES = Counter("spotrain_reconciles_total", "Reconcile passes by result (ok, invalid, failed)", ["result"])
RESCALES = Counter("spotrain_rescales_total", "Scale changes (workers created or removed in one decision)",
                   ["namespace", "job"])
FALLBACKS = Counter("spotrain_fallbacks_total", "Workers placed on the on-demand fallback pool", ["namespace", "job"])
PREEMPTIONS = Counter("spotrain_preemptions_total", "Workers lost to spot interruptions",
                      ["namespace", "job", "pool", "zone"])
CHECKPOINT_REQUESTS = Counter("spotrain_checkpoint_requests_total", "Coordinated checkpoints requested on notice",
                              ["namespace", "job"])
DRAIN_OUTCOMES = ("durable", "deadline", "unreachable")
# outcome: durable (evicted once the checkpoint was durable), deadline (evicted at the deadline minus the safety
# margin without a durable checkpoint), unreachable (the worker's control endpoint did not answer).
DRAINS = Counter("spotrain_drains_total", "Workers evicted after an interruption notice, by outcome",
                 ["namespace", "job", "outcome"])
NOTICE_TO_REQUEST_SECONDS = Histogram(
    "spotrain_notice_to_request_seconds", "From the start of the reconcile that saw a notice to the request sent",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
NOTICE_TO_DRAIN_SECONDS = Histogram(
    "spotrain_notice_to_drain_seconds", "From a drain's checkpoint request to the eviction of the worker, by outcome "
    "(durable: the notice-to-durable time)", ["outcome"], buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120),
)
HOURLY_COST = Gauge("spotrain_job_hourly_cost", "Current cost per hour of a job's workers", ["namespace", "job"])
SAVING_PERCENT = Gauge("spotrain_job_saving_percent", "Saving against on-demand", ["namespace", "job"])

PER_JOB_METRICS: tuple[MetricWrapperBase, ...] = (
    WORKERS, JOB_PHASE, RESCALES, FALLBACKS, PREEMPTIONS, CHECKPOINT_REQUESTS, DRAINS, HOURLY_COST, SAVING_PERCENT,
)

# Per-job values the gauges are summed from; the gauges are rebuilt from this on every change.
_phases: dict[tuple[str, str], str] = {}
_workers: dict[tuple[str, str], Tally[tuple[str, str, str]]] = {}


def record_job(namespace: str, name: str, phase: str, workers: list[tuple[str, str, str]]) -> None:
    key = (namespace, name)
    if key not in _phases:
        _start_counters(namespace, name)
    previous_phase = _phases.get(key)
    _phases[key] = phase
    if previous_phase is not None and previous_phase != phase:
        JOB_PHASE.remove(namespace, name, previous_phase)
    if phase:
        JOB_PHASE.labels(namespace, name, phase).set(1)
    previous = _workers.get(key, Tally())
    current = Tally(workers)
    for pool, zone, capacity in previous.keys() - current.keys():
        WORKERS.remove(namespace, name, pool, zone, capacity)
    for (pool, zone, capacity), count in current.items():
        WORKERS.labels(namespace, name, pool, zone, capacity).set(count)
        PREEMPTIONS.labels(namespace, name, pool, zone)  # at 0, so that the first preemption there is an increase
    _workers[key] = current
    _refresh_phases()


def _start_counters(namespace: str, name: str) -> None:
    """Creates a new job's counters at 0: a series born at 1 shows no increase() to an alert rule."""
    for counter in (RESCALES, FALLBACKS, CHECKPOINT_REQUESTS):
        counter.labels(namespace, name)
    for outcome in DRAIN_OUTCOMES:
        DRAINS.labels(namespace, name, outcome)


def record_drain(namespace: str, name: str, outcome: str, seconds_since_request: float) -> None:
    """One worker evicted after a notice, with one of DRAIN_OUTCOMES, this long after its checkpoint request."""
    DRAINS.labels(namespace, name, outcome).inc()
    NOTICE_TO_DRAIN_SECONDS.labels(outcome).observe(seconds_since_request)


def set_leader(leading: bool) -> None:
    LEADER.set(1 if leading else 0)


def forget_job(namespace: str, name: str) -> None:
    """Drops every series of a deleted job, counters included: a job's series must not outlive it."""
    _phases.pop((namespace, name), None)
    _workers.pop((namespace, name), None)
    for metric in PER_JOB_METRICS:
        metric.remove_by_labels({"namespace": namespace, "job": name})
    _refresh_phases()


def _refresh_phases() -> None:
    counts = Tally(_phases.values())
    for phase in PHASES:
        JOBS.labels(phase).set(counts.get(phase, 0))
