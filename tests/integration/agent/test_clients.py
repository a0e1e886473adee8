"""The metadata clients' I/O against scripted servers on 127.0.0.1 (no cluster): the IMDSv2 token's life,
GCP's ETag protocol, Azure's name lookup and acknowledgement, and failures turned into MetadataError."""

from __future__ import annotations

import datetime
import json
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from spotrain_dev import processes
from spotrain_operator.agent import http
from spotrain_operator.agent.aws_imds import ImdsClient
from spotrain_operator.agent.azure_events import AzureEventsClient
from spotrain_operator.agent.gcp_metadata import GcpMetadataClient
from spotrain_operator.agent.interruption import AWS_REBALANCE, AWS_SPOT_ITN, AZURE_PREEMPT, MetadataError

if TYPE_CHECKING:
    from tests.integration.agent.conftest import FakeMetadataServer, Request, Route

    Make = Callable[..., FakeMetadataServer]

UTC = datetime.UTC
ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
TOKEN = "/latest/api/token"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Imds:
    """IMDSv2 only: tokens are numbered; ``valid`` says which one the server still accepts."""

    def __init__(self) -> None:
        self.issued = 0
        self.valid: set[str] = set()
        self.action: bytes | None = None

    def token(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        if "x-aws-ec2-metadata-token-ttl-seconds" not in req.headers:
            return 400, {}, b"missing ttl"
        self.issued += 1
        tok = f"token-{self.issued}"
        self.valid.add(tok)
        return 200, {"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": req.headers["x-aws-ec2-metadata-token-ttl-seconds"]}, \
            tok.encode()

    def guarded(self, answer: Callable[[], tuple[int, dict[str, str], bytes]]) -> Route:
        def route(req: Request) -> tuple[int, dict[str, str], bytes]:
            if req.headers.get("x-aws-ec2-metadata-token") not in self.valid:
                return 401, {}, b"unauthorized"
            return answer()
        return route

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("PUT", TOKEN): self.token,
            ("GET", ACTION): self.guarded(lambda: (200, {}, self.action) if self.action else (404, {}, b"")),
            ("GET", REBALANCE): self.guarded(lambda: (200, {}, b'{"noticeTime": "2026-01-01T08:20:00Z"}')),
        }


def test_imds_token_is_reused_renewed_before_expiry_and_after_401(metadata_server: Make) -> None:
    imds = Imds()
    srv = metadata_server(imds.routes())
    clock = Clock()
    c = ImdsClient(srv.url, timeout=5, monotonic=clock)
    for _ in range(3):
        i = c.poll()
        assert i is not None and i.kind == AWS_REBALANCE
    assert imds.issued == 1
    puts = srv.hits("PUT", TOKEN)
    assert puts[0].headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"

    imds.valid.clear()  # the server forgot the token (expired early, IMDS restarted): 401, one new token
    imds.action = b'{"action": "terminate", "time": "2026-01-01T08:22:00Z"}'
    i = c.poll()
    assert i is not None and i.kind == AWS_SPOT_ITN
    assert imds.issued == 2

    clock.t = 21600 - 100  # within the refresh margin: renewed before it expires
    c.poll()
    assert imds.issued == 3
    assert all(r.headers.get("x-aws-ec2-metadata-token") in {"token-1", "token-2", "token-3"}
               for r in srv.hits("GET", ACTION))


def test_imds_falls_back_to_v1_when_v2_is_not_offered(metadata_server: Make) -> None:
    srv = metadata_server({
        ("PUT", TOKEN): lambda r: (403, {}, b"IMDSv2 disabled"),
        ("GET", ACTION): lambda r: (200, {}, b'{"action": "stop", "time": "2026-01-01T08:22:00Z"}'),
    })
    clock = Clock()
    c = ImdsClient(srv.url, timeout=5, monotonic=clock)
    i = c.poll()
    assert i is not None and i.kind == AWS_SPOT_ITN and c.uses_v1
    assert all("x-aws-ec2-metadata-token" not in r.headers for r in srv.hits("GET", ACTION))
    puts = len(srv.hits("PUT", TOKEN))
    c.poll()
    assert len(srv.hits("PUT", TOKEN)) == puts  # not asked again at every poll
    clock.t = 301
    c.poll()
    assert len(srv.hits("PUT", TOKEN)) == puts + 1  # but again after a while


def test_imds_errors(metadata_server: Make) -> None:
    srv = metadata_server({("PUT", TOKEN): lambda r: (500, {}, b"oops")})
    with pytest.raises(MetadataError, match="api/token: HTTP 500"):
        ImdsClient(srv.url, timeout=5).poll()
    with pytest.raises(MetadataError, match="refused"):
        ImdsClient(f"http://127.0.0.1:{processes.free_port()}", timeout=5).poll()


def test_a_notice_read_counts_even_when_another_path_fails(metadata_server: Make) -> None:
    srv = metadata_server({
        ("PUT", TOKEN): lambda r: (200, {}, b"t"),
        ("GET", ACTION): lambda r: (200, {}, b'{"action": "terminate", "time": "2026-01-01T08:22:00Z"}'),
        ("GET", REBALANCE): lambda r: (500, {}, b""),
    })
    i = ImdsClient(srv.url, timeout=5).poll()
    assert i is not None and i.kind == AWS_SPOT_ITN


def test_gcp_follows_the_etag_and_times_out_a_stuck_wait(metadata_server: Make) -> None:
    state = {"value": "FALSE", "etag": "e0"}
    release = threading.Event()

    def preempted(req: Request) -> tuple[int, dict[str, str], bytes]:
        if req.query.get("wait_for_change") == ["true"] and req.query.get("last_etag") == [state["etag"]]:
            release.wait(10)  # past the client's timeout (wait 1 s + 2 x timeout 0.5 s + 1 s)
        return 200, {"ETag": str(state["etag"]), "Metadata-Flavor": "Google"}, state["value"].encode()

    srv = metadata_server({("GET", "/computeMetadata/v1/instance/preempted"): preempted})
    c = GcpMetadataClient(srv.url, timeout=0.5, wait_seconds=1)
    assert c.poll() is None
    with pytest.raises(MetadataError, match="timed out"):
        c.poll()  # the server ignored timeout_sec
    release.set()
    assert c.poll() is None  # starts again with a plain read
    reqs = srv.hits("GET", "/computeMetadata/v1/instance/preempted")
    assert [r.query.get("wait_for_change") for r in reqs] == [None, ["true"], None]
    assert reqs[1].query["timeout_sec"] == ["1"]
    state.update(value="TRUE", etag="e1")
    before = datetime.datetime.now(UTC)
    i = c.poll()
    assert i is not None and i.deadline is not None
    assert before + datetime.timedelta(seconds=29) < i.deadline < before + datetime.timedelta(seconds=40)
    assert c.poll() == i  # preemption is final; the deadline does not move


def azure_doc(vm: str) -> bytes:
    return json.dumps({"DocumentIncarnation": 5, "Events": [
        {"EventId": "ev", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": [vm],
         "EventStatus": "Scheduled", "NotBefore": "Mon, 19 Sep 2033 18:29:47 GMT"}]}).encode()


def test_azure_name_lookup_and_acknowledgement(metadata_server: Make) -> None:
    posts: list[int] = [500]

    def post(req: Request) -> tuple[int, dict[str, str], bytes]:
        return (posts.pop(0) if posts else 200), {}, b""

    srv = metadata_server({
        ("GET", "/metadata/instance/compute/name"): lambda r: (200, {}, b"myvmss_4"),
        ("GET", "/metadata/scheduledevents"): lambda r: (200, {}, azure_doc("myvmss_4")),
        ("POST", "/metadata/scheduledevents"): post,
    })
    c = AzureEventsClient(srv.url, timeout=5)
    i = c.poll()
    assert i is not None and (i.kind, i.event_id) == (AZURE_PREEMPT, "ev")
    assert c.vm_names == {"myvmss_4"} and c.incarnation == 5
    c.poll()
    assert len(srv.hits("GET", "/metadata/instance/compute/name")) == 1  # looked up once
    with pytest.raises(MetadataError, match="HTTP 500"):
        c.acknowledge_due(drained=True)
    assert c.unacknowledged() == ["ev"]  # a failed POST is tried again
    assert c.acknowledge_due(drained=True) == ["ev"]
    assert c.acknowledge_due(drained=True) == []
    bodies = [json.loads(r.body) for r in srv.hits("POST", "/metadata/scheduledevents")]
    assert bodies == [{"StartRequests": [{"EventId": "ev"}]}] * 2
    assert all(r.headers["metadata"] == "true" for r in srv.requests)
    assert all(r.query == {"api-version": ["2020-07-01"]} for r in srv.requests if r.path.endswith("events"))


def test_azure_without_a_name_marks_nothing(metadata_server: Make) -> None:
    srv = metadata_server({("GET", "/metadata/scheduledevents"): lambda r: (200, {}, azure_doc("x_1"))})
    with pytest.raises(MetadataError, match="name is unknown"):
        AzureEventsClient(srv.url, timeout=5).poll()
    assert srv.hits("GET", "/metadata/scheduledevents") == []


def test_http_bounds(metadata_server: Make) -> None:
    big = b"x" * (http.MAX_BODY + 1)
    srv = metadata_server({("GET", "/big"): lambda r: (200, {}, big)})
    with pytest.raises(MetadataError, match="larger"):
        http.request("GET", srv.url + "/big", timeout=5)
    assert http.request("GET", srv.url + "/nothing", timeout=5).status == 404
    # A server that accepts and never answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(MetadataError, match="timed out"):
            http.request("GET", f"http://127.0.0.1:{s.getsockname()[1]}/", timeout=0.3)
