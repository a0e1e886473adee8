"""Azure Scheduled Events: ``Preempt`` events for this VM, and their acknowledgement.

    GET  /metadata/scheduledevents?api-version=2020-07-01        Metadata: true
         {"DocumentIncarnation": 2, "Events": [{"EventId": "...", "EventType": "Preempt",
          "ResourceType": "VirtualMachine", "Resources": ["vmss_3"], "EventStatus": "Scheduled",
          "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT", ...}]}
    POST /metadata/scheduledevents?api-version=2020-07-01        {"StartRequests": [{"EventId": "..."}]}
    GET  /metadata/instance/compute/name?api-version=2021-02-01&format=text     (this VM's name)

Events name the VMs they affect in ``Resources``; a scale set's document lists events of other instances too,
so only events that name this VM count. Event types other than Preempt are ignored.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from spotrain_operator.agent import http
from spotrain_operator.agent.interruption import AZURE_PREEMPT, Interruption, MetadataError, parse_rfc1123, utcnow

log = logging.getLogger(__name__)

DEFAULT_URL = "http://169.254.169.254"
API_VERSION = "2020-07-01"
EVENTS_PATH = f"/metadata/scheduledevents?api-version={API_VERSION}"
NAME_PATH = "/metadata/instance/compute/name?api-version=2021-02-01&format=text"
HEADERS = {"Metadata": "true"}
ACK_LEAD = datetime.timedelta(seconds=5)  # acknowledge by itself this long before NotBefore


@dataclass(frozen=True)
class ScheduledEvent:
    event_id: str
    event_type: str
    resource_type: str
    resources: tuple[str, ...]
    status: str  # Scheduled | Started
    not_before: datetime.datetime | None  # None once Started (the platform sends an empty string)
    description: str = ""

    def affects(self, vm_names: Iterable[str]) -> bool:
        names = {n.lower() for n in vm_names if n}
        return any(r.lower() in names for r in self.resources)


@dataclass(frozen=True)
class EventsDocument:
    incarnation: int
    events: tuple[ScheduledEvent, ...]
    skipped: int = 0  # entries that were not well-formed events (ignored, logged)


def parse_document(body: bytes) -> EventsDocument:
    """Parses the scheduled events document; malformed events are skipped, a malformed document raises."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MetadataError(f"scheduledevents: not JSON: {body[:80]!r}") from e
    if not isinstance(doc, dict):
        raise MetadataError(f"scheduledevents: not an object: {body[:80]!r}")
    incarnation = doc.get("DocumentIncarnation")
    raw_events = doc.get("Events")
    if not isinstance(incarnation, int) or isinstance(incarnation, bool) or not isinstance(raw_events, list):
        raise MetadataError(f"scheduledevents: no DocumentIncarnation/Events: {body[:80]!r}")
    events = []
    skipped = 0
    for raw in raw_events:
        try:
            events.append(_parse_event(raw))
        except ValueError as e:
            log.debug("skipping a malformed scheduled event: %s", e)
            skipped += 1
    return EventsDocument(incarnation, tuple(events), skipped)


def _parse_event(raw: object) -> ScheduledEvent:
    if not isinstance(raw, dict):
        raise ValueError(f"not an object: {raw!r}")
    event_id, event_type = raw.get("EventId"), raw.get("EventType")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise ValueError(f"no EventId/EventType: {raw!r}")
    resources = raw.get("Resources")
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise ValueError(f"Resources is not a list of names: {raw!r}")
    status = raw.get("EventStatus")
    if not isinstance(status, str):
        raise ValueError(f"no EventStatus: {raw!r}")
    not_before_raw = raw.get("NotBefore")
    not_before = None
    if not_before_raw not in (None, ""):
        not_before = parse_rfc1123(not_before_raw)
    elif status == "Scheduled":
        raise ValueError(f"a Scheduled event without NotBefore: {raw!r}")
    return ScheduledEvent(
        event_id=event_id,
        event_type=event_type,
        resource_type=str(raw.get("ResourceType") or ""),
        resources=tuple(resources),
        status=status,
        not_before=not_before,
        description=str(raw.get("Description") or ""),
    )


def preempt_events(doc: EventsDocument, vm_names: Iterable[str]) -> list[ScheduledEvent]:
    """This VM's Preempt events (Scheduled or Started)."""
    names = list(vm_names)
    return [
        e for e in doc.events
        if e.event_type == "Preempt" and e.status in ("Scheduled", "Started") and e.affects(names)
    ]


def interruption_for(events: Iterable[ScheduledEvent], now: datetime.datetime) -> Interruption | None:
    """The earliest of the events as one Interruption; a Started event (no NotBefore) goes now."""
    best: Interruption | None = None
    for e in events:
        deadline = e.not_before or now
        if best is None or best.deadline is None or deadline < best.deadline:
            best = Interruption(AZURE_PREEMPT, deadline, e.event_id, f"Preempt {e.status}")
    return best


def events_to_acknowledge(
    events: Iterable[ScheduledEvent],
    acknowledged: Iterable[str],
    drained: bool,
    now: datetime.datetime,
    lead: datetime.timedelta = ACK_LEAD,
) -> list[str]:
    """Event ids to acknowledge now: this VM's Scheduled Preempt events not acknowledged yet, once the node is
    drained or when NotBefore is less than ``lead`` away, whichever comes first."""
    done = set(acknowledged)
    due = []
    for e in events:
        if e.event_type != "Preempt" or e.status != "Scheduled" or e.event_id in done:
            continue
        if drained or (e.not_before is not None and e.not_before - now <= lead):
            due.append(e.event_id)
    return due


def ack_body(event_ids: Iterable[str]) -> bytes:
    return json.dumps({"StartRequests": [{"EventId": i} for i in event_ids]}).encode()


_VMSS_ID = re.compile(r"/virtualMachineScaleSets/([^/]+)/virtualMachines/([^/]+)$", re.IGNORECASE)
_VM_ID = re.compile(r"/providers/Microsoft\.Compute/virtualMachines/([^/]+)$", re.IGNORECASE)


def vm_name_from_provider_id(provider_id: str | None) -> str | None:
    """The VM name Scheduled Events use, from a Node's ``azure:///subscriptions/.../virtualMachines/<n>``:
    ``<scaleset>_<instance>`` for a scale set instance, the VM's name for a standalone VM."""
    if not provider_id or not provider_id.startswith("azure://"):
        return None
    m = _VMSS_ID.search(provider_id)
    if m:
        return f"{m.group(1)}_{m.group(2)}"
    m = _VM_ID.search(provider_id)
    return m.group(1) if m else None


class AzureEventsClient:
    """``poll()`` returns an ``azure-preempt`` Interruption for this VM or None; ``acknowledge_due()`` sends
    the StartRequests that are due, each event once."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 2.0,
        vm_names: Iterable[str] = (),
        lookup_name: bool = True,
        clock: Callable[[], datetime.datetime] = utcnow,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.vm_names = {n for n in vm_names if n}
        self._lookup_name = lookup_name  # ask IMDS for compute/name until it answers
        self._clock = clock
        self._started: dict[str, datetime.datetime] = {}  # Started events without NotBefore: first seen
        self.acknowledged: set[str] = set()
        self.incarnation: int | None = None
        self.mine: list[ScheduledEvent] = []

    def _discover_name(self) -> str:
        """Asks IMDS for this VM's name; returns what went wrong ("" when it answered)."""
        try:
            resp = http.request("GET", self.base_url + NAME_PATH, HEADERS, None, self.timeout)
        except MetadataError as e:
            return str(e)  # unreachable: try again next poll
        name = resp.text.strip()
        if resp.status == 200 and name and len(name) < 256 and re.fullmatch(r"[\w.\-]+", name):
            self.vm_names.add(name)
            self._lookup_name = False
            return ""
        if self.vm_names:
            self._lookup_name = False  # it answered, without a name: the given/derived name will do
        return f"compute/name: HTTP {resp.status}: {resp.body[:80]!r}"

    def poll(self) -> Interruption | None:
        problem = self._discover_name() if self._lookup_name else ""
        if not self.vm_names:
            raise MetadataError(f"this VM's name is unknown, none was given and IMDS did not tell ({problem})")
        resp = http.request("GET", self.base_url + EVENTS_PATH, HEADERS, None, self.timeout)
        if resp.status != 200:
            raise MetadataError(f"scheduledevents: HTTP {resp.status}")
        doc = parse_document(resp.body)
        if doc.skipped and doc.incarnation != self.incarnation:  # once per document, not every second
            log.warning("scheduledevents: ignored %d malformed event(s) in document %d", doc.skipped,
                        doc.incarnation)
        self.incarnation = doc.incarnation
        now = self._clock()
        mine = preempt_events(doc, self.vm_names)
        # A Started event has no NotBefore: its deadline is when it was first seen, stable across polls.
        for e in mine:
            if e.not_before is None:
                self._started.setdefault(e.event_id, now)
        self.mine = mine
        return interruption_for(
            [e if e.not_before else replace(e, not_before=self._started[e.event_id]) for e in mine], now
        )

    def unacknowledged(self) -> list[str]:
        """This VM's Scheduled Preempt events from the last poll that have not been acknowledged."""
        return events_to_acknowledge(self.mine, self.acknowledged, True, self._clock())

    def acknowledge_due(self, drained: bool) -> list[str]:
        """POSTs the StartRequests that are due (see ``events_to_acknowledge``); returns the ids sent."""
        due = events_to_acknowledge(self.mine, self.acknowledged, drained, self._clock())
        if not due:
            return []
        resp = http.request("POST", self.base_url + EVENTS_PATH, {**HEADERS, "Content-Type": "application/json"},
                            ack_body(due), self.timeout)
        if not 200 <= resp.status < 300:
            raise MetadataError(f"scheduledevents acknowledgement: HTTP {resp.status}")
        self.acknowledged.update(due)
        return due
