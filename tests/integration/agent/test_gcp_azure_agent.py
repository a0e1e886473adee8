"""spotrain-agent against small local servers that follow GCP's and Azure's documented metadata formats."""

from __future__ import annotations

import datetime
import email.utils
import json
import threading
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from spotrain_dev.timestamps import rfc3339
from spotrain_operator.wellknown import NODE_DRAINED_ANNOTATION

if TYPE_CHECKING:
    from tests.integration.agent.conftest import Harness, Request

pytestmark = pytest.mark.cluster

UTC = datetime.UTC
PREEMPTED = "/computeMetadata/v1/instance/preempted"
EVENTS = "/metadata/scheduledevents"
NAME = "/metadata/instance/compute/name"


class GcpPreempted:
    """instance/preempted as the GCP metadata server serves it: the current value with an ETag, or, with
    wait_for_change=true, a GET that hangs until the value differs from last_etag or timeout_sec passes."""

    def __init__(self, hanging: bool = True):
        self.value = "FALSE"
        self.version = 0
        self.hanging = hanging
        self.changed = threading.Condition()
        self.waiting = 0

    def set(self, value: str) -> None:
        with self.changed:
            self.value = value
            self.version += 1
            self.changed.notify_all()

    def etag(self) -> str:
        return f"etag-{self.version}"

    def __call__(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        if req.headers.get("metadata-flavor") != "Google":
            return 403, {}, b"Missing Metadata-Flavor:Google header.\n"
        wait = req.query.get("wait_for_change") == ["true"]
        if self.hanging and wait:
            last = req.query.get("last_etag", [None])[0]
            timeout = float(req.query.get("timeout_sec", ["60"])[0])
            with self.changed:
                self.waiting += 1
                self.changed.wait_for(lambda: self.etag() != last, timeout=timeout)
                self.waiting -= 1
        with self.changed:
            headers = {"Metadata-Flavor": "Google", "Content-Type": "application/text"}
            if self.hanging:
                headers["ETag"] = self.etag()
            return 200, headers, self.value.encode()


def test_gcp_hanging_get(harness: Harness) -> None:
    node = harness.node("gke-spot")
    preempted = GcpPreempted()
    srv = harness.server({("GET", PREEMPTED): preempted})
    agent = harness.agent(node, "gcp", srv.url, "--gcp-wait-seconds", "30")
    harness.wait_for("a hanging wait_for_change request", lambda: preempted.waiting > 0, agent=agent)
    assert harness.mark(node).taint is None
    before = datetime.datetime.now(UTC).replace(microsecond=0)
    preempted.set("TRUE")
    mark = harness.wait_for("the gcp-preempted mark", lambda: harness.mark(node).taint == "gcp-preempted" and
                            harness.mark(node), agent=agent)
    after = datetime.datetime.now(UTC)
    assert harness.effect(node) == "NoSchedule"
    assert mark.event is None
    deadline = datetime.datetime.fromisoformat(mark.deadline.replace("Z", "+00:00"))
    # now + 30 s at detection
    assert before + datetime.timedelta(seconds=30) <= deadline <= after + datetime.timedelta(seconds=30)
    gets = srv.hits("GET", PREEMPTED)
    assert gets[0].query == {}  # the first read is plain, then the agent hangs on the ETag
    assert any(r.query.get("last_etag") == ["etag-0"] for r in gets)
    assert all(r.headers.get("metadata-flavor") == "Google" for r in gets)


def test_gcp_plain_polling(harness: Harness) -> None:
    """A metadata server that answers at once (no ETag, no hanging) is polled at the interval."""
    node = harness.node("gke-spot")
    preempted = GcpPreempted(hanging=False)
    srv = harness.server({("GET", PREEMPTED): preempted})
    agent = harness.agent(node, "auto", srv.url, "--interval", "0.5")  # gce://... says GCP
    harness.wait_for("three FALSE answers", lambda: len(srv.hits("GET", PREEMPTED)) >= 3, agent=agent)
    assert harness.mark(node).taint is None
    preempted.set("TRUE")
    harness.wait_for("the gcp-preempted mark", lambda: harness.mark(node).taint == "gcp-preempted", agent=agent)
    assert [e["provider"] for e in harness.log_lines(agent) if e["msg"] == "spotrain-agent started"] == ["gcp"]


def rfc1123(t: datetime.datetime) -> str:
    return email.utils.format_datetime(t.astimezone(UTC).replace(microsecond=0), usegmt=True)


def azure_event(event_id: str, resources: list[str], not_before: datetime.datetime, event_type: str = "Preempt"
                ) -> dict[str, Any]:
    return {"EventId": event_id, "EventType": event_type, "ResourceType": "VirtualMachine",
            "Resources": resources, "EventStatus": "Scheduled", "NotBefore": rfc1123(not_before),
            "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}


class AzureEvents:
    def __init__(self, vm_name: str, events: list[dict[str, Any]]):
        self.vm_name = vm_name
        self.doc = {"DocumentIncarnation": 1, "Events": events}

    def events(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        if req.headers.get("metadata") != "true" or req.query.get("api-version") != ["2020-07-01"]:
            return 400, {}, b'{"error": "Bad request"}'
        if req.method == "POST":
            return 200, {}, b""
        return 200, {"Content-Type": "application/json"}, json.dumps(self.doc).encode()

    def name(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        if req.headers.get("metadata") != "true" or req.query.get("format") != ["text"]:
            return 400, {}, b""
        if not self.vm_name:
            return 404, {}, b""
        return 200, {"Content-Type": "text/plain"}, self.vm_name.encode()


def azure_server(harness: Harness, node: str, events: list[dict[str, Any]], name_lookup: bool = True
                 ) -> tuple[Any, AzureEvents]:
    az = AzureEvents(vm_name_of(harness.core, node) if name_lookup else "", events)
    srv = harness.server({("GET", EVENTS): az.events, ("POST", EVENTS): az.events, ("GET", NAME): az.name})
    return srv, az


def vm_name_of(core: client.CoreV1Api, node: str) -> str:
    # azure:///subscriptions/.../virtualMachineScaleSets/<ss>/virtualMachines/<i>: Scheduled Events say <ss>_<i>
    parts = core.read_node(node).spec.provider_id.split("/")
    return f"{parts[-3]}_{parts[-1]}"


def test_azure_preempt_marked_and_acknowledged_once_drained(harness: Harness) -> None:
    node = harness.node("aks-spot")
    me = vm_name_of(harness.core, node)
    now = datetime.datetime.now(UTC)
    not_before = now + datetime.timedelta(minutes=10)
    srv, _ = azure_server(harness, node, [
        azure_event("other-vm-event", ["aks-other-vmss_9"], now + datetime.timedelta(minutes=5)),
        azure_event("reboot-event", [me], now + datetime.timedelta(minutes=6), event_type="Reboot"),
        azure_event("0b3b9f62-6c74-44b5-a6a4-3cf1e1e5bd2c", ["aks-other-vmss_9", me], not_before),
    ])
    agent = harness.agent(node, "azure", srv.url, "--interval", "0.5")
    mark = harness.wait_for("the azure-preempt mark", lambda: harness.mark(node).taint == "azure-preempt" and
                            harness.mark(node), agent=agent)
    assert harness.effect(node) == "NoSchedule"
    assert mark.deadline == rfc3339(not_before)
    assert mark.event == "0b3b9f62-6c74-44b5-a6a4-3cf1e1e5bd2c"
    assert srv.hits("GET", NAME), "the VM name comes from IMDS compute/name"

    # Not drained, NotBefore far: polls go on, no acknowledgement.
    polls = len(srv.hits("GET", EVENTS))
    harness.wait_for("three more polls", lambda: len(srv.hits("GET", EVENTS)) >= polls + 3, agent=agent)
    assert srv.hits("POST", EVENTS) == []

    harness.core.patch_node(node, {"metadata": {"annotations": {NODE_DRAINED_ANNOTATION: "true"}}},
                            _content_type="application/merge-patch+json")
    harness.wait_for("the acknowledgement", lambda: srv.hits("POST", EVENTS), agent=agent)
    polls = len(srv.hits("GET", EVENTS))
    harness.wait_for("three more polls", lambda: len(srv.hits("GET", EVENTS)) >= polls + 3, agent=agent)
    posts = srv.hits("POST", EVENTS)
    assert len(posts) == 1
    assert json.loads(posts[0].body) == {"StartRequests": [{"EventId": "0b3b9f62-6c74-44b5-a6a4-3cf1e1e5bd2c"}]}
    assert posts[0].headers.get("metadata") == "true"
    after = harness.mark(node)
    assert (after.taint, after.deadline, after.event) == (mark.taint, mark.deadline, mark.event)


def test_azure_acknowledges_by_itself_near_not_before(harness: Harness) -> None:
    """Undrained, the agent still starts the event when NotBefore is less than ~5 s away. Here IMDS does not
    tell the VM's name: --provider auto reads the Node's providerID, which names the VM too."""
    node = harness.node("aks-spot")
    me = vm_name_of(harness.core, node)
    not_before = datetime.datetime.now(UTC) + datetime.timedelta(seconds=8)
    srv, _ = azure_server(harness, node, [azure_event("soon", [me], not_before)], name_lookup=False)
    agent = harness.agent(node, "auto", srv.url, "--interval", "0.5")
    harness.wait_for("the acknowledgement", lambda: srv.hits("POST", EVENTS), agent=agent)
    assert harness.mark(node).taint == "azure-preempt"
    assert NODE_DRAINED_ANNOTATION not in harness.mark(node).annotations
    assert json.loads(srv.hits("POST", EVENTS)[0].body) == {"StartRequests": [{"EventId": "soon"}]}
    assert srv.hits("GET", NAME)  # asked, answered 404


def test_azure_other_vms_events_are_ignored(harness: Harness) -> None:
    node = harness.node("aks-spot")
    now = datetime.datetime.now(UTC)
    srv, _ = azure_server(harness, node, [
        azure_event("theirs", ["aks-other-vmss_9"], now + datetime.timedelta(seconds=2)),
        azure_event("also-theirs", ["aks-other-vmss_8"], now + datetime.timedelta(minutes=1)),
    ])
    agent = harness.agent(node, "azure", srv.url, "--interval", "0.5")
    harness.wait_for("six polls", lambda: len(srv.hits("GET", EVENTS)) >= 6, agent=agent)
    assert harness.mark(node).taint is None
    assert srv.hits("POST", EVENTS) == []
