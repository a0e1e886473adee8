"""Per-job series of the operator's metrics end with the job (issue 13: "per-job counters stay forever")."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from spotrain_operator import metrics


def _series_of(namespace: str, job: str) -> list[str]:
    return [f"{sample.name}{sample.labels}" for family in REGISTRY.collect() for sample in family.samples
            if sample.labels.get("namespace") == namespace and sample.labels.get("job") == job]


def _touch_every_per_job_metric(namespace: str, job: str) -> None:
    metrics.record_job(namespace, job, "Running", [("spot-a", "zone-a", "spot"), ("od", "zone-b", "on-demand")])
    metrics.RESCALES.labels(namespace, job).inc()
    metrics.FALLBACKS.labels(namespace, job).inc()
    metrics.PREEMPTIONS.labels(namespace, job, "spot-a", "us-east-1a").inc(2)
    metrics.PREEMPTIONS.labels(namespace, job, "spot-b", "us-east-1b").inc()
    metrics.CHECKPOINT_REQUESTS.labels(namespace, job).inc()
    metrics.record_drain(namespace, job, "durable", 12.0)
    metrics.record_drain(namespace, job, "deadline", 110.0)
    metrics.HOURLY_COST.labels(namespace, job).set(1.5)
    metrics.SAVING_PERCENT.labels(namespace, job).set(60)


def test_forget_job_removes_every_per_job_series_and_keeps_other_jobs() -> None:
    _touch_every_per_job_metric("team-a", "llm")
    _touch_every_per_job_metric("team-a", "other")
    assert _series_of("team-a", "llm")

    metrics.forget_job("team-a", "llm")

    assert _series_of("team-a", "llm") == []
    kept = _series_of("team-a", "other")
    assert any(s.startswith("spotrain_preemptions_total") for s in kept)
    assert any(s.startswith("spotrain_job_phase") for s in kept)
    metrics.forget_job("team-a", "other")


def test_every_metric_labelled_by_job_is_forgotten() -> None:
    """A metric added later with namespace and job labels but missing from PER_JOB_METRICS would outlive jobs."""
    defined = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    labelled = {m._name for m in defined if {"namespace", "job"} <= set(m._labelnames)}
    assert labelled == {m._name for m in metrics.PER_JOB_METRICS}


def test_job_phase_series_follows_the_phase_and_the_phase_counts_stay_summed() -> None:
    metrics.record_job("ns", "j1", "Pending", [])
    metrics.record_job("ns", "j1", "Waiting", [])
    metrics.record_job("ns", "j2", "Waiting", [])
    phases = {s.labels["phase"]: s.value for f in REGISTRY.collect() if f.name == "spotrain_job_phase"
              for s in f.samples if s.labels["job"] == "j1"}
    assert phases == {"Waiting": 1.0}
    assert REGISTRY.get_sample_value("spotrain_jobs", {"phase": "Waiting"}) == 2
    metrics.forget_job("ns", "j1")
    metrics.forget_job("ns", "j2")
    assert REGISTRY.get_sample_value("spotrain_jobs", {"phase": "Waiting"}) == 0
