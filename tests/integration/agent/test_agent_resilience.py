"""A metadata service that is down, slow or garbled: spotrain-agent keeps polling, says so, never marks the Node;
when the service comes back, a real notice is still picked up."""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

from spotrain_dev import processes
from spotrain_dev.timestamps import rfc3339

if TYPE_CHECKING:
    from tests.integration.agent.conftest import Harness, Request, Route

pytestmark = pytest.mark.cluster

UTC = datetime.UTC
WHEN = rfc3339(datetime.datetime.now(UTC) + datetime.timedelta(hours=1))
NOT_BEFORE = "Mon, 19 Sep 2033 18:29:47 GMT"


def ok(body: bytes, ctype: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": ctype}, body


def aws_notice() -> dict[tuple[str, str], Route]:
    return {
        ("PUT", "/latest/api/token"): lambda r: ok(b"AQAEAFake-token==", "text/plain"),
        ("GET", "/latest/meta-data/spot/instance-action"):
            lambda r: ok(json.dumps({"action": "terminate", "time": WHEN}).encode()),
    }


def gcp_notice() -> dict[tuple[str, str], Route]:
    return {("GET", "/computeMetadata/v1/instance/preempted"): lambda r: ok(b"TRUE", "application/text")}


def azure_notice(vm: str) -> dict[tuple[str, str], Route]:
    doc = {"DocumentIncarnation": 3, "Events": [
        {"EventId": "e-1", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": [vm],
         "EventStatus": "Scheduled", "NotBefore": NOT_BEFORE, "Description": "", "EventSource": "Platform",
         "DurationInSeconds": -1}]}
    return {("GET", "/metadata/scheduledevents"): lambda r: ok(json.dumps(doc).encode())}


POOLS = {"aws": "spot-cpu", "gcp": "gke-spot", "azure": "aks-spot"}
KINDS = {"aws": "aws-spot-itn", "gcp": "gcp-preempted", "azure": "azure-preempt"}
VM = "aks-aks-spot-vmss_1"  # given to the Azure agent with --vm-name


def routes(provider: str, answer: Route | None = None) -> dict[tuple[str, str], Route]:
    """The provider's notice routes, or every one of them answering ``answer`` instead."""
    real = aws_notice() if provider == "aws" else gcp_notice() if provider == "gcp" else azure_notice(VM)
    if answer is None:
        return real
    return {key: answer for key in real}


class Agent:
    def __init__(self, harness: Harness, provider: str, url: str, node: str):
        self.health = processes.free_port()
        extra = ["--vm-name", VM] if provider == "azure" else []
        # --warn-every 0: every failure is logged, so each phase's cause can be checked (60 s by default).
        self.proc = harness.agent(node, provider, url, "--interval", "0.5", "--timeout", "0.5", "--max-backoff",
                                  "1", "--warn-every", "0", "--health-port", str(self.health),
                                  "--health-bind", "127.0.0.1", *extra)

    def ready(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/readyz", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)


def warnings(harness: Harness, agent: Agent, cause: str) -> list[dict[str, Any]]:
    return [e for e in harness.log_lines(agent.proc)
            if e["level"] == "warning" and str(e["msg"]).startswith("cannot reach the metadata service")
            and cause in str(e["error"])]


def keeps_polling_and_says_so(harness: Harness, agent: Agent, node: str, cause: str) -> None:
    """Two failed polls with ``cause`` in the warning, the agent alive, not ready, the Node untouched."""
    harness.wait_for(f"warnings with {cause!r}", lambda: len(warnings(harness, agent, cause)) >= 2, agent=agent.proc)
    assert agent.ready() == 503
    assert agent.proc.alive()
    assert harness.mark(node).taint is None


def slow(req: Request) -> tuple[int, dict[str, str], bytes]:
    time.sleep(2.5)  # beyond the agent's --timeout 0.5
    return ok(b"too late")


GARBAGE: dict[str, tuple[Route, str]] = {
    "aws": (lambda r: ok(b"<html><body>Service Unavailable</body></html>", "text/html"), "not JSON"),
    "gcp": (lambda r: ok(b"<html>maintenance</html>", "text/html"), "neither TRUE nor FALSE"),
    "azure": (lambda r: ok(b'{"DocumentIncarnation": "x", "Events": "none"}'), "no DocumentIncarnation"),
}


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_down_garbled_slow_then_back(harness: Harness, provider: str) -> None:
    node = harness.node(POOLS[provider])
    port = processes.free_port()
    agent = Agent(harness, provider, f"http://127.0.0.1:{port}", node)

    # 1. nothing listens: connection refused
    keeps_polling_and_says_so(harness, agent, node, "refused")
    # 2. it answers garbage
    garbage, cause = GARBAGE[provider]
    srv_routes = routes(provider, garbage)
    srv = harness.server(srv_routes, port=port)
    keeps_polling_and_says_so(harness, agent, node, cause)
    # 3. it answers too late
    srv_routes.update(routes(provider, slow))
    keeps_polling_and_says_so(harness, agent, node, "timed out")
    # 4. it is back, with a notice
    srv_routes.update(routes(provider))
    kind = KINDS[provider]
    harness.wait_for(f"the {kind} mark", lambda: harness.mark(node).taint == kind, agent=agent.proc)
    assert any(e["msg"] == "metadata service reachable again" for e in harness.log_lines(agent.proc))
    assert agent.ready() == 200
    assert srv.requests
