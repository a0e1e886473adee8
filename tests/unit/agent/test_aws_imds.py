"""Parsing of the EC2 instance metadata documents (as ec2-metadata-mock and EC2 serve them)."""

from __future__ import annotations

import datetime

import pytest

from spotrain_operator.agent.aws_imds import parse_instance_action, parse_rebalance, parse_scheduled_events
from spotrain_operator.agent.interruption import AWS_REBALANCE, AWS_SCHEDULED, AWS_SPOT_ITN, MetadataError

HTML_404 = b'<?xml version="1.0" encoding="iso-8859-1"?>\n<html><body><h1>404 - Not Found</h1></body></html>'


@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_instance_action(action: str) -> None:
    body = b'{\n\t"action": "%s",\n\t"time": "2026-01-01T08:22:00Z"\n}' % action.encode()
    i = parse_instance_action(200, body)
    assert i is not None
    assert i.kind == AWS_SPOT_ITN
    assert i.deadline == datetime.datetime(2026, 1, 1, 8, 22, tzinfo=datetime.UTC)
    assert i.event_id is None
    assert i.detail == f"action={action}"


def test_instance_action_404_is_nothing() -> None:
    assert parse_instance_action(404, HTML_404) is None


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, HTML_404),  # a 200 with an HTML page
        (200, b""),
        (200, b"[]"),
        (200, b'{"action": "terminate"}'),  # no time
        (200, b'{"action": "terminate", "time": "in two minutes"}'),
        (200, b'{"action": "reboot", "time": "2026-01-01T08:22:00Z"}'),
        (200, b'{"action": null, "time": "2026-01-01T08:22:00Z"}'),
        (500, b"internal error"),
        (401, b"unauthorized"),
        (200, b"\xff\xfe\x00garbage"),
    ],
)
def test_instance_action_garbage_is_an_error_not_a_notice(status: int, body: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_instance_action(status, body)


def test_rebalance_has_no_deadline() -> None:
    i = parse_rebalance(200, b'{\n\t"noticeTime": "2026-01-01T08:20:00Z"\n}')
    assert i is not None
    assert i.kind == AWS_REBALANCE
    assert i.deadline is None
    assert "2026-01-01T08:20:00Z" in i.detail


def test_rebalance_404_is_nothing() -> None:
    assert parse_rebalance(404, HTML_404) is None


@pytest.mark.parametrize(("status", "body"), [(200, b"{}"), (200, b'{"noticeTime": 5}'), (200, b"nope"),
                                              (503, b"")])
def test_rebalance_garbage(status: int, body: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_rebalance(status, body)


SCHEDULED = b"""[
  {"Code": "system-reboot", "Description": "scheduled reboot", "State": "active",
   "EventId": "instance-event-late", "NotBefore": "29 Nov 2026 07:45:07 GMT",
   "NotAfter": "4 Dec 2026 07:45:07 GMT", "NotBeforeDeadline": "6 Dec 2026 07:45:07 GMT"},
  {"Code": "instance-stop", "Description": "The instance is scheduled for instance-stop", "State": "active",
   "EventId": "instance-event-1234567890abcdef0", "NotBefore": "27 Nov 2026 07:45:07 GMT",
   "NotAfter": "4 Dec 2026 07:45:07 GMT", "NotBeforeDeadline": "6 Dec 2026 07:45:07 GMT"},
  {"Code": "instance-retirement", "Description": "[Completed] retired", "State": "completed",
   "EventId": "instance-event-old", "NotBefore": "1 Nov 2026 07:45:07 GMT"},
  {"Code": "instance-stop", "Description": "[Canceled] stop", "State": "canceled",
   "EventId": "instance-event-canceled", "NotBefore": "20 Nov 2026 07:45:07 GMT"}
]"""


def test_scheduled_events_earliest_active() -> None:
    i = parse_scheduled_events(200, SCHEDULED)
    assert i is not None
    assert i.kind == AWS_SCHEDULED
    assert i.event_id == "instance-event-1234567890abcdef0"
    assert i.deadline == datetime.datetime(2026, 11, 27, 7, 45, 7, tzinfo=datetime.UTC)


@pytest.mark.parametrize("body", [b"[]", b'[{"Code": "instance-stop", "State": "completed", "EventId": "x", '
                                        b'"NotBefore": "27 Nov 2026 07:45:07 GMT"}]'])
def test_scheduled_events_none_active(body: bytes) -> None:
    assert parse_scheduled_events(200, body) is None
    assert parse_scheduled_events(404, HTML_404) is None


@pytest.mark.parametrize("body", [b"{}", b"[1]", b'[{"Code": "instance-stop", "State": "active", "NotBefore": "x"}]'])
def test_scheduled_events_garbage(body: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_scheduled_events(200, body)
