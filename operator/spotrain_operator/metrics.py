"""Prometheus metrics of the operator."""

from __future__ import annotations

import contextlib
from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

JOBS = Gauge("spotrain_jobs", "SpotTrainingJobs by phase", ["phase"])
WORKERS = Gauge("spotrain_workers", "Running worker pods", ["namespace", "job", "pool", "zone", "capacity_type"])
RECONCILE_SECONDS = Histogram(
    "spotrain_reconcile_duration_seconds", "Time of one reconcile of a job",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESCALES = Counter("spotrain_rescales_total", "Scale changes (workers created or removed in one decision)",
                   ["namespace", "job"])
FALLBACKS = Counter("spotrain_fallbacks_total", "Workers placed on the on-demand fallback pool", ["namespace", "job"])
PREEMPTIONS = Counter("spotrain_preemptions_total", "Workers lost to spot interruptions", ["namespace", "job", "pool"])
CHECKPOINT_REQUESTS = Counter("spotrain_checkpoint_requests_total", "Coordinated checkpoints requested on notice",
                              ["namespace", "job"])
NOTICE_TO_REQUEST_SECONDS = Histogram(
    "spotrain_notice_to_request_seconds", "From the start of the reconcile that saw a notice to the request sent",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
HOURLY_COST = Gauge("spotrain_job_hourly_cost", "Current cost per hour of a job's workers", ["namespace", "job"])
SAVING_PERCENT = Gauge("spotrain_job_saving_percent", "Saving against on-demand", ["namespace", "job"])

# Per-job values the gauges are summed from; the gauges are rebuilt from this on every change.
_phases: dict[tuple[str, str], str] = {}
_workers: dict[tuple[str, str], Tally[tuple[str, str, str]]] = {}


def record_job(namespace: str, name: str, phase: str, workers: list[tuple[str, str, str]]) -> None:
    key = (namespace, name)
    _phases[key] = phase
    previous = _workers.get(key, Tally())
    current = Tally(workers)
    for pool, zone, capacity in previous.keys() - current.keys():
        WORKERS.remove(namespace, name, pool, zone, capacity)
    for (pool, zone, capacity), count in current.items():
        WORKERS.labels(namespace, name, pool, zone, capacity).set(count)
    _workers[key] = current
    _refresh_phases()


def forget_job(namespace: str, name: str) -> None:
    key = (namespace, name)
    _phases.pop(key, None)
    for pool, zone, capacity in _workers.pop(key, Tally()):
        WORKERS.remove(namespace, name, pool, zone, capacity)
    for gauge in (HOURLY_COST, SAVING_PERCENT):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    _refresh_phases()


def _refresh_phases() -> None:
    counts = Tally(_phases.values())
    for phase in ("Pending", "Running", "Rescaling", "Waiting", "Suspended", "Succeeded", "Failed"):
        JOBS.labels(phase).set(counts.get(phase, 0))
