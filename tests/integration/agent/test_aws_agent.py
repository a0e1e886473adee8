"""spotrain-agent against a real ec2-metadata-mock (the simulator the AWS Node Termination Handler's own e2e
tests use) on 127.0.0.1, marking a KWOK Node of the devcluster."""

from __future__ import annotations

import datetime
import re
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

from spotrain_dev import processes
from spotrain_dev.timestamps import rfc3339

if TYPE_CHECKING:
    from tests.integration.agent.conftest import Harness

pytestmark = pytest.mark.cluster

UTC = datetime.UTC


def metric(port: int, name: str, result: str) -> float:
    """One of the agent's counters, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(rf'^{name}_total\{{result="{result}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def polls_ok(port: int) -> float:
    return metric(port, "spotrain_agent_metadata_polls", "ok")


def test_spot_itn_with_the_mocks_time(harness: Harness) -> None:
    """IMDSv1 and v2 both allowed; the mock's default time (request time + 2 min) moves on every request: the
    agent writes the deadline once and does not rewrite it on later polls."""
    node = harness.node()
    port, health = processes.free_port(), processes.free_port()
    before = datetime.datetime.now(UTC).replace(microsecond=0)
    harness.ec2_metadata_mock(port, "spot", "--action", "terminate")
    agent = harness.agent(node, "aws", f"http://127.0.0.1:{port}", "--interval", "0.5",
                          "--health-port", str(health), "--health-bind", "127.0.0.1")
    mark = harness.wait_for("the spot-itn mark", lambda: harness.mark(node).taint == "aws-spot-itn" and
                            harness.mark(node), agent=agent)
    assert harness.effect(node) == "NoSchedule"
    assert mark.event is None
    deadline = datetime.datetime.fromisoformat(mark.deadline.replace("Z", "+00:00"))
    after = datetime.datetime.now(UTC)
    assert before + datetime.timedelta(seconds=120) <= deadline <= after + datetime.timedelta(seconds=121)

    seen = harness.wait_for("the agent's metrics", lambda: polls_ok(health), agent=agent)
    harness.wait_for("five more polls", lambda: polls_ok(health) >= seen + 5, agent=agent)
    assert harness.mark(node) == mark
    # One patch; the notice seen again later needed none (the same kind with a later time is no news).
    assert metric(health, "spotrain_agent_node_updates", "changed") == 1
    assert metric(health, "spotrain_agent_node_updates", "error") == 0


def test_spot_itn_imdsv2_required(harness: Harness) -> None:
    action = "hibernate"
    node = harness.node()
    port = processes.free_port()
    when = rfc3339(datetime.datetime.now(UTC) + datetime.timedelta(minutes=10))
    harness.ec2_metadata_mock(port, "spot", "--action", action, "--time", when, "--imdsv2")
    # Without a token the mock refuses: the agent's notice proves the IMDSv2 session works.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/latest/meta-data/spot/instance-action", timeout=5)
    assert refused.value.code == 401
    agent = harness.agent(node, "aws", f"http://127.0.0.1:{port}", "--interval", "0.5")
    mark = harness.wait_for("the spot-itn mark", lambda: harness.mark(node).taint == "aws-spot-itn" and
                            harness.mark(node), agent=agent)
    assert mark.deadline == when
    lines = harness.log_lines(agent)
    marked = [e for e in lines if e["msg"] == "marked node for interruption"]
    assert marked[-1]["detail"] == f"action={action}"
    assert not [e for e in lines if e["level"] == "warning"], lines


def test_rebalance_then_termination(harness: Harness) -> None:
    """A rebalance recommendation marks aws-rebalance without a deadline; the interruption notice that follows
    (a mock restarted with the notice due at once) replaces it."""
    node = harness.node()
    port = processes.free_port()
    mock = harness.ec2_metadata_mock(port, "spot", "--mock-delay-sec", "3600", "--rebalance-delay-sec", "0", "--imdsv2")
    agent = harness.agent(node, "aws", f"http://127.0.0.1:{port}", "--interval", "0.5", "--max-backoff", "1")
    mark = harness.wait_for("the rebalance mark", lambda: harness.mark(node).taint == "aws-rebalance" and
                            harness.mark(node), agent=agent)
    assert mark.deadline is None and mark.event is None
    assert harness.effect(node) == "NoSchedule"

    mock.stop()
    when = rfc3339(datetime.datetime.now(UTC) + datetime.timedelta(minutes=2))
    harness.ec2_metadata_mock(port, "spot", "--time", when, "--imdsv2")
    mark = harness.wait_for("the spot-itn mark", lambda: harness.mark(node).taint == "aws-spot-itn" and
                            harness.mark(node), agent=agent)
    assert mark.deadline == when
    assert harness.effect(node) == "NoSchedule"


def test_scheduled_maintenance_when_asked_for(harness: Harness) -> None:
    node = harness.node()
    port = processes.free_port()
    before = datetime.datetime.now(UTC).replace(microsecond=0)
    harness.ec2_metadata_mock(port, "events", "--code", "instance-stop", "--state", "active")
    # --provider auto: the Node's providerID (aws:///us-east-1a/i-...) says AWS.
    agent = harness.agent(node, "auto", f"http://127.0.0.1:{port}", "--interval", "0.5", "--scheduled-events")
    mark = harness.wait_for("the scheduled mark", lambda: harness.mark(node).taint == "aws-scheduled" and
                            harness.mark(node), agent=agent)
    assert mark.event == "instance-event-1234567890abcdef0"
    assert [e["provider"] for e in harness.log_lines(agent) if e["msg"] == "spotrain-agent started"] == ["aws"]
    # NotBefore defaults to the mock's start time.
    assert mark.deadline is not None
    deadline = datetime.datetime.fromisoformat(mark.deadline.replace("Z", "+00:00"))
    assert before <= deadline <= datetime.datetime.now(UTC)
