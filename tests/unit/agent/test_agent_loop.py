"""The agent's poll loop with fake sources and a fake marker: failures never mark, backoff, rate-limited
warnings, cached marks, Azure acknowledgement, and the command line."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest
from kubernetes import client

from spotrain_operator.agent import azure_events
from spotrain_operator.agent.interruption import AWS_REBALANCE, AWS_SPOT_ITN, AZURE_PREEMPT, Interruption, MetadataError
from spotrain_operator.agent.main import Agent, parse_args, provider_from_provider_id
from spotrain_operator.agent.node_marker import MarkResult
from spotrain_operator.wellknown import NODE_DRAINED_ANNOTATION

UTC = datetime.UTC
T0 = datetime.datetime(2026, 1, 1, 8, 22, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class ScriptedSource:
    def __init__(self, *answers: Interruption | Exception | None):
        self.answers = list(answers)
        self.polls = 0

    def poll(self) -> Interruption | None:
        self.polls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeMarker:
    def __init__(self, fail: int = 0, drained: bool = False):
        self.marks: list[Interruption] = []
        self.fail = fail
        self.drained = drained
        self.reads = 0

    def mark(self, name: str, i: Interruption) -> MarkResult:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("apiserver down")
        changed = not self.marks or self.marks[-1] != i
        self.marks.append(i)
        return MarkResult(name, changed, {} if changed else None, self.drained)

    def read(self, name: str) -> client.V1Node:
        self.reads += 1
        annotations = {NODE_DRAINED_ANNOTATION: "true"} if self.drained else {}
        return client.V1Node(metadata=client.V1ObjectMeta(name=name, annotations=annotations))


def agent(source: Any, marker: Any, clock: Clock, **kw: Any) -> Agent:
    return Agent(source, marker, "n1", interval=2.0, max_backoff=10.0, monotonic=clock, **kw)


ITN = Interruption(AWS_SPOT_ITN, T0, None, "action=terminate")


def test_failures_never_mark_and_back_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    marker = FakeMarker()
    a = agent(ScriptedSource(MetadataError("connection refused")), marker, clock)
    caplog.set_level(logging.WARNING)
    waits = []
    for _ in range(6):
        waits.append(a.step())
        clock.t += 1
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert marker.marks == []
    warnings = [r for r in caplog.records if "cannot reach the metadata service" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited
    assert warnings[0].fields["error"] == "connection refused"  # type: ignore[attr-defined]
    clock.t += 120
    a.step()
    assert len([r for r in caplog.records if "cannot reach" in r.getMessage()]) == 2
    assert caplog.records[-1].fields["suppressed"] == 5  # type: ignore[attr-defined]


def test_unexpected_exceptions_are_failures_too() -> None:
    marker = FakeMarker()
    a = agent(ScriptedSource(KeyError("surprise")), marker, Clock())
    assert a.step() == 2.0
    assert a.failures == 1 and marker.marks == []


def test_recovery_then_a_real_notice(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    marker = FakeMarker()
    a = agent(ScriptedSource(MetadataError("timed out"), MetadataError("timed out"), None, ITN), marker, Clock())
    a.step()
    a.step()
    assert a.step() == 2.0
    assert a.failures == 0
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    a.step()
    assert marker.marks == [ITN]
    assert any("marked node" in r.getMessage() for r in caplog.records)


def test_the_same_notice_is_not_patched_every_poll() -> None:
    clock = Clock()
    marker = FakeMarker()
    later = Interruption(AWS_SPOT_ITN, T0 + datetime.timedelta(seconds=2))
    earlier = Interruption(AWS_SPOT_ITN, T0 - datetime.timedelta(seconds=10))
    a = agent(ScriptedSource(ITN, ITN, later, earlier, earlier), marker, clock)
    for _ in range(3):
        a.step()
    assert marker.marks == [ITN]  # the same, and a later deadline, need no read of the Node
    a.step()
    assert marker.marks == [ITN, earlier]
    clock.t += 61  # re-checked once a minute
    a.step()
    assert marker.marks == [ITN, earlier, earlier]


def test_a_stronger_notice_is_applied_after_a_weaker_one() -> None:
    marker = FakeMarker()
    reb = Interruption(AWS_REBALANCE, None)
    a = agent(ScriptedSource(reb, reb, ITN), marker, Clock())
    for _ in range(3):
        a.step()
    assert marker.marks == [reb, ITN]


def test_a_failed_patch_is_retried_on_the_next_poll(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    marker = FakeMarker(fail=2)
    a = agent(ScriptedSource(ITN), marker, Clock())
    for _ in range(3):
        a.step()
    assert marker.marks == [ITN]
    assert len([r for r in caplog.records if "cannot mark the node" in r.getMessage()]) == 1


class FakeAzure:
    """What Agent uses of AzureEventsClient: the events of the last poll and the acknowledgement."""

    def __init__(self, near: bool = False):
        self.near = near
        self.acknowledged: set[str] = set()
        self.calls: list[bool] = []

    def poll(self) -> Interruption | None:
        return Interruption(AZURE_PREEMPT, T0, "ev-1")

    def unacknowledged(self) -> list[str]:
        return [] if "ev-1" in self.acknowledged else ["ev-1"]

    def acknowledge_due(self, drained: bool) -> list[str]:
        self.calls.append(drained)
        if (drained or self.near) and "ev-1" not in self.acknowledged:
            self.acknowledged.add("ev-1")
            return ["ev-1"]
        return []


def test_azure_acknowledges_once_after_drained() -> None:
    marker = FakeMarker()
    fake = FakeAzure()
    a = agent(fake, marker, Clock(), azure=fake)
    a.step()
    a.step()
    assert fake.calls == [False, False] and not fake.acknowledged
    marker.drained = True
    a.step()
    assert fake.acknowledged == {"ev-1"}
    reads = marker.reads
    a.step()
    a.step()
    assert fake.calls == [False, False, True]  # nothing left to acknowledge: no more reads or POSTs
    assert marker.reads == reads


def test_azure_does_not_acknowledge_what_was_not_marked() -> None:
    marker = FakeMarker(fail=100, drained=True)
    fake = FakeAzure(near=True)
    a = agent(fake, marker, Clock(), azure=fake)
    a.step()
    assert fake.calls == []


def test_azure_client_acknowledgement_decision() -> None:
    now = datetime.datetime(2016, 9, 19, 18, 29, 30, tzinfo=UTC)
    c = azure_events.AzureEventsClient("http://127.0.0.1:9", vm_names=["vm_1"], lookup_name=False,
                                       clock=lambda: now)
    doc = azure_events.parse_document(
        b'{"DocumentIncarnation": 3, "Events": [{"EventId": "e1", "EventType": "Preempt", '
        b'"ResourceType": "VirtualMachine", "Resources": ["vm_1"], "EventStatus": "Scheduled", '
        b'"NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT"}]}')
    c.mine = azure_events.preempt_events(doc, c.vm_names)
    assert c.unacknowledged() == ["e1"]
    assert c.acknowledge_due(drained=False) == []  # 17 s before NotBefore, not drained: no request
    c.acknowledged.add("e1")
    assert c.unacknowledged() == []


@pytest.mark.parametrize(("provider_id", "provider"), [
    ("aws:///us-east-1a/i-0000000aabcdef12", "aws"),
    ("gce://spotrain-dev/us-east-1a/gke-spot-a-3", "gcp"),
    ("azure:///subscriptions/0/resourceGroups/r/providers/Microsoft.Compute/virtualMachines/v", "azure"),
    ("kind://docker/kind/kind-control-plane", None),
    ("", None),
    (None, None),
])
def test_provider_from_provider_id(provider_id: str | None, provider: str | None) -> None:
    assert provider_from_provider_id(provider_id) == provider


def test_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "from-env")
    args = parse_args(["--provider", "aws", "--metadata-url", "http://127.0.0.1:1338"])
    assert (args.node_name, args.provider, args.interval, args.kubeconfig) == ("from-env", "aws", None, None)
    monkeypatch.delenv("NODE_NAME")
    with pytest.raises(SystemExit):
        parse_args(["--provider", "aws"])
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "n", "--provider", "ibm"])
