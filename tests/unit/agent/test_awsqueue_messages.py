"""EventBridge messages of every detail-type the AWS queue mode reads, and malformed ones."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from spotrain_operator.agent.interruption import AWS_REBALANCE, AWS_SCHEDULED, AWS_SPOT_ITN, AWS_STATE_CHANGE
from spotrain_operator.awsqueue import MalformedMessage, instance_id_from_provider_id, parse_message

UTC = datetime.UTC
INSTANCE = "i-1234567890abcdef0"


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
