"""The chart's PrometheusRule, rendered by helm and run by `promtool test rules` on synthetic series: every alert
fires on the situation it names, not before its `for`, not on the healthy neighbours, with the labels and text
the on-call engineer sees. Both binaries come from dev/testbin/build.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotrain_dev import testbin

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spotrain"
NAMESPACE = "spotrain-system"
OPERATOR = {"job": "spotrain-metrics", "namespace": NAMESPACE}  # release "spotrain": its metrics Service


def render_rules(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(testbin.path("helm")), "template", "spotrain", str(CHART), "--namespace", NAMESPACE,
         "--set", "metrics.prometheusRule.enabled=true", "--show-only", "templates/prometheusrule.yaml", *args],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return yaml.safe_load(out)


@pytest.fixture(scope="module")
def rule() -> dict[str, Any]:
    return render_rules()


@pytest.fixture(scope="module")
def static_annotations(rule: dict[str, Any]) -> dict[str, dict[str, str]]:
    """runbook and runbook_url of each alert: plain text, no templates."""
    return {r["alert"]: {k: r["annotations"][k] for k in ("runbook", "runbook_url")}
            for g in rule["spec"]["groups"] for r in g["rules"]}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def expect(alertname: str, at: str, *alerts: tuple[dict[str, str], dict[str, str]]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alertname,
            "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations} for labels, annotations in alerts]}


def run_promtool(tmp_path: Path, rule: dict[str, Any], tests: list[dict[str, Any]]) -> None:
    rules_file = tmp_path / "spotrain-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    promtool = str(testbin.path("promtool"))
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    test_file = tmp_path / "spotrain-rules-test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "evaluation_interval": "1m",
                                         "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_runbook_line_and_a_runbook_section(static_annotations: dict[str, dict[str, str]]) -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    assert set(static_annotations) == {
        "SpotrainJobBelowMinNodes", "SpotrainCheckpointTooOld", "SpotrainNoticeNotDrained", "SpotrainPreemptionStorm",
        "SpotrainOperatorDown", "SpotrainNoLeader", "SpotrainAgentMetadataUnreachable"}
    for alert, static in static_annotations.items():
        assert static["runbook"].strip(), alert
        anchor = static["runbook_url"].rsplit("#", 1)[1]
        assert anchor == alert.lower() and f"### {alert}\n" in operations, alert


def test_job_alerts(tmp_path: Path, rule: dict[str, Any], static_annotations: dict[str, dict[str, str]]) -> None:
    below = static_annotations["SpotrainJobBelowMinNodes"]
    old = static_annotations["SpotrainCheckpointTooOld"]
    undrained = static_annotations["SpotrainNoticeNotDrained"]
    job = {"namespace": "team-a", "job": "llm"}
    run_promtool(tmp_path, rule, [
        {"interval": "1m", "input_series": [
            series("spotrain_job_phase", "1x30", **job, phase="Waiting"),
            # recovered after 10 minutes: never alerts
            series("spotrain_job_phase", "1x10 stale", namespace="team-a", job="short", phase="Waiting"),
            series("spotrain_job_phase", "1x30", namespace="team-a", job="healthy", phase="Running"),
        ], "alert_rule_test": [
            expect("SpotrainJobBelowMinNodes", "14m"),
            expect("SpotrainJobBelowMinNodes", "16m", ({**job, "phase": "Waiting", "severity": "warning"}, {
                "summary": "SpotTrainingJob team-a/llm has fewer ready workers than spec.elastic.minNodes",
                "description": "It has been Waiting (below minNodes, not training) for more than 15m", **below})),
        ]},
        {"interval": "1m", "input_series": [
            # The age grows 60 s a minute (no new checkpoint) against a 300 s interval: above 2 x 300 from minute 11.
            series("spotrain_trainer_last_checkpoint_age_seconds", "0+60x40", **job, pod="llm-w0"),
            series("spotrain_trainer_last_checkpoint_age_seconds", "30+60x40", **job, pod="llm-w1"),
            series("spotrain_trainer_checkpoint_interval_seconds", "300x40", **job, pod="llm-w0"),
            series("spotrain_trainer_checkpoint_interval_seconds", "300x40", **job, pod="llm-w1"),
            # a job that checkpoints on time
            series("spotrain_trainer_last_checkpoint_age_seconds", "100x40", namespace="team-a", job="ok", pod="ok-w0"),
            series("spotrain_trainer_checkpoint_interval_seconds", "300x40", namespace="team-a", job="ok", pod="ok-w0"),
        ], "alert_rule_test": [
            expect("SpotrainCheckpointTooOld", "20m"),
            expect("SpotrainCheckpointTooOld", "22m", ({**job, "severity": "warning"}, {
                "summary": "The last durable checkpoint of team-a/llm is older than its interval allows",
                "description": "Newest durable checkpoint 22m 0s old, more than 2 times the checkpoint interval: "
                               "a preemption now loses that much training.", **old})),
        ]},
        {"interval": "1m", "input_series": [
            # The series exist at 0 from the job's first reconcile (metrics.record_job), so increase() sees the 1.
            series("spotrain_drains_total", "0x3 1x20", **job, outcome="deadline"),
            series("spotrain_drains_total", "0+1x20", **job, outcome="durable"),
        ], "alert_rule_test": [
            expect("SpotrainNoticeNotDrained", "2m"),
            expect("SpotrainNoticeNotDrained", "5m", ({**job, "outcome": "deadline", "severity": "warning"}, {
                "summary": "team-a/llm lost a worker to an interruption before its checkpoint was durable",
                "description": "Workers were evicted without a durable checkpoint (outcome deadline): the steps "
                               "since the previous checkpoint were lost (status.lostSteps).", **undrained})),
            expect("SpotrainNoticeNotDrained", "20m"),
        ]},
    ])


def test_capacity_alerts(tmp_path: Path, rule: dict[str, Any], static_annotations: dict[str, dict[str, str]]) -> None:
    storm = static_annotations["SpotrainPreemptionStorm"]
    run_promtool(tmp_path, rule, [
        {"interval": "1m", "input_series": [
            # one worker of pool spot-a lost every minute, summed over two jobs; spot-b loses one in total
            series("spotrain_preemptions_total", "0+1x20", namespace="a", job="j1", pool="spot-a"),
            series("spotrain_preemptions_total", "0x20", namespace="b", job="j2", pool="spot-a"),
            series("spotrain_preemptions_total", "0 1x20", namespace="a", job="j1", pool="spot-b"),
        ], "alert_rule_test": [
            expect("SpotrainPreemptionStorm", "3m"),
            expect("SpotrainPreemptionStorm", "16m", ({"pool": "spot-a", "severity": "warning"}, {
                "summary": "Spot pool spot-a is being reclaimed repeatedly",
                "description": "15 workers in pool spot-a were preempted in the last 15m.", **storm})),
        ]},
    ])


def test_component_alerts(tmp_path: Path, rule: dict[str, Any],
                          static_annotations: dict[str, dict[str, str]]) -> None:
    down = static_annotations["SpotrainOperatorDown"]
    leaderless = static_annotations["SpotrainNoLeader"]
    metadata = static_annotations["SpotrainAgentMetadataUnreachable"]
    agent = {"namespace": NAMESPACE}
    run_promtool(tmp_path, rule, [
        {"interval": "1m", "input_series": [
            series("up", "1x5 0x20", **OPERATOR, pod="spotrain-0"),
            series("up", "1x5 stale", **OPERATOR, pod="spotrain-1"),  # the pod is gone
            # another release's operator, up all the time, does not hide this one's absence
            series("up", "1x25", job="spotrain-metrics", namespace="other", pod="spotrain-0"),
            series("spotrain_leader", "1x5 0x20", **OPERATOR, pod="spotrain-0"),
        ], "alert_rule_test": [
            expect("SpotrainOperatorDown", "10m"),
            expect("SpotrainOperatorDown", "12m", ({**OPERATOR, "severity": "critical"}, {
                "summary": "No spotrain operator replica is being scraped",
                "description": f'No target job="spotrain-metrics", namespace="{NAMESPACE}" has been up for 5m: '
                               "jobs are neither placed nor drained on interruption notices.", **down})),
            # no replica up: that is SpotrainOperatorDown, not a missing leader
            expect("SpotrainNoLeader", "12m"),
        ]},
        {"interval": "1m", "input_series": [
            series("up", "1x20", **OPERATOR, pod="spotrain-0"),
            series("up", "1x20", **OPERATOR, pod="spotrain-1"),
            series("spotrain_leader", "1x3 0x20", **OPERATOR, pod="spotrain-0"),
            series("spotrain_leader", "0x20", **OPERATOR, pod="spotrain-1"),
        ], "alert_rule_test": [
            expect("SpotrainNoLeader", "8m"),
            expect("SpotrainNoLeader", "10m", ({**OPERATOR, "severity": "critical"}, {
                "summary": "spotrain operator replicas run but none holds the leader Lease",
                "description": "For 5m no replica has acted on SpotTrainingJobs.", **leaderless})),
        ]},
        {"interval": "1m", "input_series": [
            series("spotrain_agent_metadata_reachable", "0x20", **agent, pod="agent-a", node="spot-1"),
            series("spotrain_agent_info", "1x20", **agent, pod="agent-a", node="spot-1", provider="aws"),
            # idle on a kind node: nothing to reach, no alert
            series("spotrain_agent_metadata_reachable", "0x20", **agent, pod="agent-b", node="kind-worker"),
            series("spotrain_agent_info", "1x20", **agent, pod="agent-b", node="kind-worker", provider="none"),
            series("spotrain_agent_metadata_reachable", "1x20", **agent, pod="agent-c", node="spot-2"),
        ], "alert_rule_test": [
            expect("SpotrainAgentMetadataUnreachable", "4m"),
            expect("SpotrainAgentMetadataUnreachable", "6m", ({**agent, "pod": "agent-a", "node": "spot-1",
                                                                "severity": "warning"}, {
                "summary": "spotrain-agent agent-a cannot reach its node's metadata service",
                "description": "Interruption notices on node spot-1 are missed unless another source (termination "
                               "handler, queue) reports them.", **metadata})),
        ]},
    ])


def test_thresholds_and_alert_labels_come_from_values() -> None:
    rule = render_rules("--set", "metrics.prometheusRule.belowMinNodesFor=30m",
                        "--set", "metrics.prometheusRule.preemptionStormThreshold=12",
                        "--set", "metrics.prometheusRule.alertLabels.team=ml-platform",
                        "--set", "metrics.prometheusRule.namespace=monitoring")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rules["SpotrainJobBelowMinNodes"]["for"] == "30m"
    assert rules["SpotrainPreemptionStorm"]["expr"].endswith(">= 12")
    assert all(r["labels"]["team"] == "ml-platform" for r in rules.values())
