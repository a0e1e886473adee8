"""EventBridge messages of every detail-type the AWS queue mode reads, and malformed ones."""

from __future__ import annotations

import datetime
import json
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrain_operator import awsqueue
from spotrain_operator import health as liveness
from spotrain_operator.agent.interruption import AWS_REBALANCE, AWS_SCHEDULED, AWS_SPOT_ITN, AWS_STATE_CHANGE
from spotrain_operator.awsqueue import AwsQueueConsumer, MalformedMessage, instance_id_from_provider_id, parse_message
from spotrain_operator.core.model import NodeView
from spotrain_operator.core.termination import node_notice
from spotrain_operator.wellknown import (
    AGENT_DEADLINE_ANNOTATION,
    AGENT_EVENT_ANNOTATION,
    AGENT_INTERRUPTION_TAINT,
    QUEUE_EVENT_ANNOTATION,
)

UTC = datetime.UTC
INSTANCE = "i-1234567890abcdef0"
NOW = datetime.datetime(2026, 1, 1, 8, 20, tzinfo=UTC)


def envelope(detail_type: str, detail: dict[str, Any], source: str = "aws.ec2", **extra: Any) -> dict[str, Any]:
    return {
        "version": "0",
        "id": "1e5527d7-bb36-4607-3370-4164db56a40e",
        "detail-type": detail_type,
        "source": source,
        "account": "123456789012",
        "time": "2026-01-01T08:20:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:ec2:us-east-1b:instance/{INSTANCE}"],
        "detail": detail,
        **extra,
    }


def body(d: Any) -> str:
    return json.dumps(d)


@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_spot_interruption_warning(action: str) -> None:
    e = parse_message(body(envelope("EC2 Spot Instance Interruption Warning",
                                    {"instance-id": INSTANCE, "instance-action": action})))
    assert e.instance_ids == (INSTANCE,)
    assert e.interruption is not None
    assert e.interruption.kind == AWS_SPOT_ITN
    # The detail has no time: the event's time + the 2 minutes AWS gives.
    assert e.interruption.deadline == datetime.datetime(2026, 1, 1, 8, 22, tzinfo=UTC)
    assert e.interruption.event_id == "1e5527d7-bb36-4607-3370-4164db56a40e"
    assert e.interruption.detail == f"action={action}"


def test_rebalance_recommendation() -> None:
    e = parse_message(body(envelope("EC2 Instance Rebalance Recommendation", {"instance-id": INSTANCE})))
    assert e.instance_ids == (INSTANCE,)
    assert e.interruption is not None
    assert (e.interruption.kind, e.interruption.deadline) == (AWS_REBALANCE, None)
    assert e.interruption.event_id == "1e5527d7-bb36-4607-3370-4164db56a40e"


@pytest.mark.parametrize("state", ["shutting-down", "stopping", "stopped", "terminated"])
def test_state_change_going(state: str) -> None:
    e = parse_message(body(envelope("EC2 Instance State-change Notification",
                                    {"instance-id": INSTANCE, "state": state})))
    assert e.interruption is not None
    assert e.interruption.kind == AWS_STATE_CHANGE
    assert e.interruption.deadline == datetime.datetime(2026, 1, 1, 8, 20, tzinfo=UTC)
    assert e.interruption.detail == f"state={state}"


@pytest.mark.parametrize("state", ["pending", "running"])
def test_state_change_not_going_is_ignored(state: str) -> None:
    e = parse_message(body(envelope("EC2 Instance State-change Notification",
                                    {"instance-id": INSTANCE, "state": state})))
    assert e.interruption is None
    assert e.instance_ids == (INSTANCE,)


def health(category: str = "scheduledChange", service: str = "EC2") -> dict[str, Any]:
    return envelope("AWS Health Event", {
        "eventArn": "arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_STOP_SCHEDULED/x",
        "service": service,
        "eventTypeCode": "AWS_EC2_INSTANCE_STOP_SCHEDULED",
        "eventTypeCategory": category,
        "startTime": "Sat, 05 Jun 2027 15:10:09 GMT",
        "endTime": "Sat, 05 Jun 2027 15:30:09 GMT",
        "affectedEntities": [{"entityValue": INSTANCE}, {"entityValue": "i-0fedcba9876543210"},
                             {"entityValue": "vol-123"}],
    }, source="aws.health")


def test_health_scheduled_change() -> None:
    e = parse_message(body(health()))
    assert e.instance_ids == (INSTANCE, "i-0fedcba9876543210")
    assert e.interruption is not None
    assert e.interruption.kind == AWS_SCHEDULED
    assert e.interruption.deadline == datetime.datetime(2027, 6, 5, 15, 10, 9, tzinfo=UTC)


@pytest.mark.parametrize("d", [health(category="issue"), health(service="RDS"),
                               envelope("EC2 AMI State Change", {"ImageId": "ami-1"}),
                               envelope("Scheduled Event", {})])
def test_other_events_are_ignored(d: dict[str, Any]) -> None:
    e = parse_message(body(d))
    assert e.interruption is None


def test_sns_envelope() -> None:
    inner = envelope("EC2 Spot Instance Interruption Warning", {"instance-id": INSTANCE,
                                                                "instance-action": "terminate"})
    e = parse_message(body({"Type": "Notification", "MessageId": "m", "Message": json.dumps(inner)}))
    assert e.interruption is not None and e.interruption.kind == AWS_SPOT_ITN


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[]",
        body({"detail-type": "EC2 Spot Instance Interruption Warning"}),  # no id, no detail
        body({k: v for k, v in envelope("EC2 Instance Rebalance Recommendation", {"instance-id": INSTANCE}).items()
              if k != "detail-type"}),
        body(envelope("EC2 Spot Instance Interruption Warning", {"instance-action": "terminate"})),
        body(envelope("EC2 Spot Instance Interruption Warning", {"instance-id": 42})),
        body(envelope("EC2 Spot Instance Interruption Warning", {"instance-id": "arn:aws:ec2:i-1"})),
        body(envelope("EC2 Spot Instance Interruption Warning", {"instance-id": INSTANCE}, time="later")),
        body(envelope("EC2 Instance State-change Notification", {"instance-id": INSTANCE})),
        body(envelope("EC2 Instance Rebalance Recommendation", "detail")),  # type: ignore[arg-type]
        body(health() | {"detail": health()["detail"] | {"startTime": "whenever"}}),
        body(health() | {"detail": health()["detail"] | {"affectedEntities": []}}),
        body({"Type": "Notification", "Message": "{not json"}),
    ],
)
def test_malformed(raw: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(raw)


@pytest.mark.parametrize(
    ("provider_id", "instance"),
    [
        ("aws:///us-east-1a/i-0000000aabcdef12", "i-0000000aabcdef12"),
        ("aws://us-east-1a/i-0000000aabcdef12", "i-0000000aabcdef12"),
        ("aws:///us-east-1a/", None),
        ("gce://spotrain-dev/us-east-1a/gke-spot-a-4", None),
        ("azure:///subscriptions/0/virtualMachines/i-3", None),
        (None, None),
    ],
)
def test_instance_from_provider_id(provider_id: str | None, instance: str | None) -> None:
    assert instance_id_from_provider_id(provider_id) == instance


# -- what a malformed message must not do: raise anything but MalformedMessage -------------------------------------

@pytest.mark.parametrize(
    "raw",
    [
        None,
        42,
        "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser recurses
        body(envelope("EC2 Spot Instance Interruption Warning", {"instance-id": INSTANCE},
                      time="9999-12-31T23:59:59Z")),  # + the 2 minutes AWS gives is past the last datetime
        body(envelope(["EC2 Spot Instance Interruption Warning"], {"instance-id": INSTANCE})),  # type: ignore[arg-type]
        body(envelope("EC2 Instance State-change Notification", {"instance-id": INSTANCE, "state": ["stopped"]})),
        body(health() | {"detail": health()["detail"] | {"startTime": 1767254400}}),
        body(health() | {"detail": health()["detail"] | {"affectedEntities": [[INSTANCE]]}}),
        body({"Type": "Notification", "Message": "[" * 100_000}),
    ],
)
def test_malformed_input_raises_only_malformed_message(raw: Any) -> None:
    with pytest.raises(MalformedMessage):
        parse_message(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
DETAIL_TYPES = ["EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation",
                "EC2 Instance State-change Notification", "AWS Health Event", "Other"]
detail_keys = st.sampled_from(["instance-id", "instance-action", "state", "service", "eventTypeCategory",
                               "affectedEntities", "startTime", "eventTypeCode"])
details = st.dictionaries(detail_keys, json_values | st.just(INSTANCE) | st.just("EC2") | st.just("scheduledChange")
                          | st.just("stopped") | st.just([{"entityValue": INSTANCE}]), max_size=8)
times = st.datetimes(timezones=st.just(UTC)).map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")) | json_values


def _parses_or_is_malformed(raw: Any) -> None:
    try:
        event = parse_message(raw)
    except MalformedMessage:
        return
    assert all(i.startswith("i-") for i in event.instance_ids)
    assert event.interruption is None or event.interruption.deadline is None or event.interruption.deadline.tzinfo


@given(json_values)
def test_any_json_parses_or_is_malformed(doc: Any) -> None:
    _parses_or_is_malformed(json.dumps(doc))


@given(st.sampled_from(DETAIL_TYPES) | json_values, st.text(max_size=40) | json_values, times, details | json_values,
       st.booleans())
def test_any_event_shape_parses_or_is_malformed(detail_type: Any, event_id: Any, when: Any, detail: Any,
                                                via_sns: bool) -> None:
    doc = {"id": event_id, "detail-type": detail_type, "time": when, "detail": detail}
    raw = json.dumps(doc)
    _parses_or_is_malformed(json.dumps({"Type": "Notification", "Message": raw}) if via_sns else raw)


# -- one batch: each message on its own ------------------------------------------------------------------------------

NODE = "spot-a-1"


class FakeSQS:
    def __init__(self, messages: list[dict[str, Any]]):
        self.messages = messages
        self.deleted: list[str] = []
        self.retried: list[str] = []
        self.receive_kwargs: dict[str, Any] = {}

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.receive_kwargs = kwargs
        return {"Messages": self.messages}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        self.deleted.append(ReceiptHandle)

    def change_message_visibility(self, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> None:
        self.retried.append(ReceiptHandle)


class FakeCore:
    """One Node for INSTANCE; ``patch_error`` makes every patch fail."""

    def __init__(self, patch_error: Exception | None = None):
        self.node = client.V1Node(metadata=client.V1ObjectMeta(name=NODE, resource_version="1", annotations={}),
                                  spec=client.V1NodeSpec(provider_id=f"aws:///us-east-1a/{INSTANCE}", taints=[]))
        self.patches: list[dict[str, Any]] = []
        self.patch_error = patch_error

    def list_node(self, **_: Any) -> client.V1NodeList:
        return client.V1NodeList(items=[self.node])

    def read_node(self, name: str, **_: Any) -> client.V1Node:
        return self.node

    def patch_node(self, name: str, patch: dict[str, Any], **_: Any) -> None:
        if self.patch_error:
            raise self.patch_error
        self.patches.append(patch)
        meta = patch["metadata"]
        self.node.metadata.annotations.update({k: v for k, v in meta.get("annotations", {}).items() if v})
        if "spec" in patch:
            self.node.spec.taints = [client.V1Taint(key=t["key"], value=t.get("value"), effect=t["effect"])
                                     for t in patch["spec"]["taints"]]


def message(handle: str, raw: Any, received: int = 1) -> dict[str, Any]:
    return {"MessageId": handle, "ReceiptHandle": handle, "Body": raw,
            "Attributes": {"ApproximateReceiveCount": str(received)}}


SPOT = body(envelope("EC2 Spot Instance Interruption Warning", {"instance-id": INSTANCE,
                                                                "instance-action": "terminate"}))


def test_a_malformed_message_does_not_stop_its_batch() -> None:
    sqs = FakeSQS([message("year-9999", body(envelope("EC2 Spot Instance Interruption Warning",
                                                      {"instance-id": INSTANCE}, time="9999-12-31T23:59:59Z"))),
                   message("nested", "[" * 100_000),
                   message("wrong-type", None),
                   message("good", SPOT)])
    core = FakeCore()
    result = AwsQueueConsumer(core, "q", sqs_client=sqs).poll_once()
    assert result.received == 4 and result.malformed == 3
    assert result.marked == [(NODE, AWS_SPOT_ITN)]
    assert sorted(sqs.deleted) == ["good", "nested", "wrong-type", "year-9999"]
    assert sqs.receive_kwargs["MessageSystemAttributeNames"] == ["ApproximateReceiveCount"]


def test_a_message_that_keeps_failing_is_deleted_after_max_receives() -> None:
    sqs = FakeSQS([message("young", SPOT, received=1), message("old", SPOT, received=5)])
    core = FakeCore(patch_error=ApiException(status=403, reason="Forbidden"))
    result = AwsQueueConsumer(core, "q", sqs_client=sqs, max_receives=5).poll_once()
    assert result.failed == ["young"] and result.poison == ["old"]
    assert sqs.deleted == ["old"] and sqs.retried == ["young"]
    # 0: never give up; the queue's redrive policy moves it to a dead-letter queue instead.
    sqs = FakeSQS([message("old", SPOT, received=500)])
    result = AwsQueueConsumer(core, "q", sqs_client=sqs, max_receives=0).poll_once()
    assert result.failed == ["old"] and sqs.deleted == []


def test_an_unexpected_error_on_one_message_leaves_the_rest_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    real_parse = awsqueue.parse_message

    def parse_with_a_bug(raw: Any) -> Any:
        if raw == "bug":
            raise RuntimeError("a bug in the parser")
        return real_parse(raw)

    monkeypatch.setattr(awsqueue, "parse_message", parse_with_a_bug)
    sqs = FakeSQS([message("bug", "bug"), message("malformed", "{"), message("good", SPOT)])
    result = AwsQueueConsumer(FakeCore(), "q", sqs_client=sqs).poll_once()
    assert result.errors == 1 and result.failed == ["bug"] and result.malformed == 1 and len(result.marked) == 1
    assert sorted(sqs.deleted) == ["good", "malformed"] and sqs.retried == ["bug"]


# -- the queue's marks say they are the queue's ------------------------------------------------------------------------

def test_the_queue_marks_its_origin_in_the_patch_that_sets_the_taint() -> None:
    core = FakeCore()
    AwsQueueConsumer(core, "q", sqs_client=FakeSQS([message("m", SPOT)])).poll_once()
    (patch,) = core.patches
    assert patch["spec"]["taints"][0]["key"] == AGENT_INTERRUPTION_TAINT
    assert patch["metadata"]["annotations"][QUEUE_EVENT_ANNOTATION] == patch["metadata"]["annotations"][
        AGENT_EVENT_ANNOTATION] == "1e5527d7-bb36-4607-3370-4164db56a40e"
    view = NodeView.from_body(client.ApiClient().sanitize_for_serialization(core.node))
    assert node_notice(view, NOW, {"agent"}, False) is None
    assert node_notice(view, NOW, {"awsQueue"}, False) is not None


def test_refining_the_agents_mark_leaves_it_the_agents() -> None:
    core = FakeCore()
    core.node.spec.taints = [client.V1Taint(key=AGENT_INTERRUPTION_TAINT, value=AWS_SPOT_ITN, effect="NoSchedule")]
    core.node.metadata.annotations = {AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:30:00Z"}
    AwsQueueConsumer(core, "q", sqs_client=FakeSQS([message("m", SPOT)])).poll_once()
    (patch,) = core.patches  # an earlier deadline and the missing event id: no taint, no origin
    assert "spec" not in patch and QUEUE_EVENT_ANNOTATION not in patch["metadata"]["annotations"]
    view = NodeView.from_body(client.ApiClient().sanitize_for_serialization(core.node))
    assert node_notice(view, NOW, {"agent"}, False) is not None


def test_the_consumer_beats_for_liveness_while_it_runs_and_stops_being_judged_when_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(liveness, "LIVENESS", liveness.Liveness(lambda: clock[0]))
    beats: list[str] = []
    beat = liveness.heartbeat

    def recorded(name: str, max_age: float) -> None:
        beats.append(name)
        beat(name, max_age)

    monkeypatch.setattr(liveness, "heartbeat", recorded)
    stop = threading.Event()

    class StoppingSQS(FakeSQS):
        def receive_message(self, **kwargs: Any) -> dict[str, Any]:
            stop.set()
            clock[0] = awsqueue.LIVENESS_MAX_AGE + 1  # the long poll took longer than a beat may be apart
            assert liveness.LIVENESS.stale() == {awsqueue.LIVENESS_NAME: clock[0]}
            return super().receive_message(**kwargs)

    AwsQueueConsumer(FakeCore(), "q", sqs_client=StoppingSQS([message("good", SPOT)])).run(stop)
    assert beats == [awsqueue.LIVENESS_NAME] * 2  # the round, and its one message
    clock[0] += 10 * awsqueue.LIVENESS_MAX_AGE
    assert liveness.LIVENESS.stale() == {}  # stopped on purpose: no longer judged
