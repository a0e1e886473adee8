"""Every PromQL query the chart ships (the Grafana dashboard, the PrometheusRule) names only metrics that the
operator, the agent or the trainer really export, under the names Prometheus sees (a Counter's _total, a
Histogram's _bucket); and the chart's monitoring objects render the way Prometheus needs them."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from spotrain_dev import testbin
from spotrain_operator import awsqueue, metrics  # noqa: F401  (importing registers their metrics)
from spotrain_operator.agent import health
from spotrain_protocol import STATUS_FILE
from spotrain_trainer.server import ControlState

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spotrain"
DASHBOARD = CHART / "files" / "dashboards" / "spotrain.json"
# Prometheus' own series of every scrape target.
SCRAPE_SERIES = {"up"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def _sample_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("", "_count", "_sum"), "info": ("_info",)}
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def _trainer_sample_names(tmp_path: Path) -> set[str]:
    """A worker's /metrics with every field of its status filled in."""
    state = ControlState(tmp_path, job="llm", pod="llm-w0", namespace="team-a")
    (tmp_path / STATUS_FILE).write_text(json.dumps({
        "phase": "training", "step": 10, "world_size": 4, "restart_count": 1, "steps_per_second": 2.5,
        "checkpoint_interval_seconds": 300, "updated_unix": time.time(), "completed": False,
        "last_checkpoint": {"step": 8, "unix_time": time.time() - 30, "duration_seconds": 4.0, "bytes": 1024,
                            "stall_seconds": 0.5},
        "checkpoints_total": {"regular": 1}, "checkpoint_failures_total": 0, "stall_seconds_total": 0.5,
    }))
    families = text_string_to_metric_families(state.metrics().decode())
    return {sample.name for family in families for sample in family.samples}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return (_sample_names(REGISTRY) | _sample_names(health.REGISTRY)
            | _trainer_sample_names(tmp_path_factory.mktemp("trainer-state")))


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers left once strings, label matchers, ranges,
    grouping clauses and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr):
        if match.group(1) not in KEYWORDS:
            names.add(match.group(1))
    return names


def test_metric_names_parser() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y"}[5m])))') == {"a_bucket"}
    assert metric_names('(b == 0) unless on (namespace, pod) (c{provider="none"} == 1)') == {"b", "c"}
    assert metric_names("min by (job) (d) > 2 * max by (job) (e)") == {"d", "e"}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1",
                                                         variable["query"]["query"])


def rule_queries() -> Iterator[tuple[str, str]]:
    out = subprocess.run(
        [str(testbin.path("helm")), "template", "spotrain", str(CHART), "--set", "metrics.prometheusRule.enabled=true",
         "--show-only", "templates/prometheusrule.yaml"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    for group in yaml.safe_load(out)["spec"]["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


@pytest.mark.parametrize("queries", [dashboard_queries, rule_queries], ids=["dashboard", "alerts"])
def test_every_query_names_an_exported_metric(queries: Any, exported: set[str]) -> None:
    unknown = {(where, name) for where, expr in queries() for name in metric_names(expr)
               if name not in exported | SCRAPE_SERIES}
    assert not unknown, f"queries name metrics nobody exports: {sorted(unknown)}"


def test_dashboard_covers_what_platform_teams_look_at() -> None:
    titles = {title for title, _ in dashboard_queries()}
    assert {"World size", "Goodput (training steps per second)", "Cost per hour", "Preemptions by pool",
            "Checkpoint age", "Checkpoint duration", "Notice to durable", "Reconcile latency"} <= titles
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
