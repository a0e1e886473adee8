"""Parsing of Azure Scheduled Events documents, the filter on this VM, and when to acknowledge."""

from __future__ import annotations

import datetime
import json

import pytest

from spotrain_operator.agent.azure_events import (
    ack_body,
    events_to_acknowledge,
    interruption_for,
    parse_document,
    preempt_events,
    vm_name_from_provider_id,
)
from spotrain_operator.agent.interruption import AZURE_PREEMPT, MetadataError

UTC = datetime.UTC
ME = "aks-spot-vmss_3"


def event(event_id: str, event_type: str = "Preempt", resources: list[str] | None = None,
          status: str = "Scheduled", not_before: str = "Mon, 19 Sep 2016 18:29:47 GMT") -> dict[str, object]:
    return {
        "EventId": event_id,
        "EventType": event_type,
        "ResourceType": "VirtualMachine",
        "Resources": [ME] if resources is None else resources,
        "EventStatus": status,
        "NotBefore": not_before,
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }


def doc(*events: dict[str, object], incarnation: int = 2) -> bytes:
    return json.dumps({"DocumentIncarnation": incarnation, "Events": list(events)}).encode()


def test_empty_document() -> None:
    d = parse_document(b'{"DocumentIncarnation": 1, "Events": []}')
    assert d.incarnation == 1
    assert d.events == ()
    assert preempt_events(d, [ME]) == []
    assert interruption_for([], datetime.datetime.now(UTC)) is None


def test_preempt_for_this_vm_among_others() -> None:
    d = parse_document(doc(
        event("other-vm", resources=["aks-spot-vmss_4"], not_before="Mon, 19 Sep 2016 18:20:00 GMT"),
        event("reboot-me", event_type="Reboot", not_before="Mon, 19 Sep 2016 18:21:00 GMT"),
        event("freeze-me", event_type="Freeze"),
        event("mine", resources=["aks-spot-vmss_4", ME.upper()]),
        incarnation=7,
    ))
    assert d.incarnation == 7
    assert len(d.events) == 4
    mine = preempt_events(d, [ME])
    assert [e.event_id for e in mine] == ["mine"]
    assert mine[0].not_before == datetime.datetime(2016, 9, 19, 18, 29, 47, tzinfo=UTC)
    i = interruption_for(mine, datetime.datetime(2016, 9, 19, 18, 29, tzinfo=UTC))
    assert i is not None
    assert (i.kind, i.event_id) == (AZURE_PREEMPT, "mine")
    assert i.deadline == datetime.datetime(2016, 9, 19, 18, 29, 47, tzinfo=UTC)


def test_no_name_matches_nothing() -> None:
    d = parse_document(doc(event("mine")))
    assert preempt_events(d, []) == []
    assert preempt_events(d, ["someone-else"]) == []


def test_earliest_of_several_preempts() -> None:
    d = parse_document(doc(event("b", not_before="Mon, 19 Sep 2016 18:30:47 GMT"),
                           event("a", not_before="Mon, 19 Sep 2016 18:29:47 GMT")))
    i = interruption_for(preempt_events(d, [ME]), datetime.datetime(2016, 9, 19, 18, tzinfo=UTC))
    assert i is not None and i.event_id == "a"


def test_started_event_has_no_not_before() -> None:
    d = parse_document(doc(event("s", status="Started", not_before="")))
    now = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    mine = preempt_events(d, [ME])
    assert mine[0].not_before is None
    i = interruption_for(mine, now)
    assert i is not None and i.deadline == now
    # Started means the platform is already at it: nothing to acknowledge.
    assert events_to_acknowledge(mine, set(), True, now) == []


def test_malformed_events_are_skipped() -> None:
    d = parse_document(doc(
        {"EventType": "Preempt"},  # no EventId
        event("bad-date", not_before="tomorrow"),
        event("no-resources") | {"Resources": "vm"},
        event("scheduled-no-date", not_before=""),
        "not an event",  # type: ignore[arg-type]
        event("good"),
    ))
    assert [e.event_id for e in d.events] == ["good"]
    assert d.skipped == 5


@pytest.mark.parametrize("body", [b"", b"<html/>", b"[]", b'{"Events": []}', b'{"DocumentIncarnation": 1}',
                                  b'{"DocumentIncarnation": "1", "Events": []}',
                                  b'{"DocumentIncarnation": 1, "Events": {}}'])
def test_garbage_document(body: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_document(body)


def test_when_to_acknowledge() -> None:
    d = parse_document(doc(event("mine"), event("other", resources=["x"])))
    mine = preempt_events(d, [ME])
    not_before = datetime.datetime(2016, 9, 19, 18, 29, 47, tzinfo=UTC)
    far = not_before - datetime.timedelta(seconds=20)
    near = not_before - datetime.timedelta(seconds=4)
    assert events_to_acknowledge(mine, set(), drained=False, now=far) == []
    assert events_to_acknowledge(mine, set(), drained=True, now=far) == ["mine"]
    assert events_to_acknowledge(mine, set(), drained=False, now=near) == ["mine"]
    assert events_to_acknowledge(mine, {"mine"}, drained=True, now=near) == []  # once


def test_ack_body() -> None:
    assert json.loads(ack_body(["a", "b"])) == {"StartRequests": [{"EventId": "a"}, {"EventId": "b"}]}


@pytest.mark.parametrize(
    ("provider_id", "name"),
    [
        ("azure:///subscriptions/0/resourceGroups/mc_rg/providers/Microsoft.Compute/virtualMachineScaleSets/"
         "aks-spot-vmss/virtualMachines/3", "aks-spot-vmss_3"),
        ("azure:///subscriptions/0/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-7", "vm-7"),
        ("aws:///us-east-1a/i-0123", None),
        ("gce://p/z/n", None),
        ("", None),
        (None, None),
    ],
)
def test_vm_name_from_provider_id(provider_id: str | None, name: str | None) -> None:
    assert vm_name_from_provider_id(provider_id) == name
