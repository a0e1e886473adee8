"""Helpers for the agent's integration tests: a Node of one's own on the devcluster, spotrain-agent as a real
process, small metadata servers on 127.0.0.1, and waiting for conditions (never for fixed times)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from spotrain_dev import processes, testbin
from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.testing import wait_for
from spotrain_operator.wellknown import AGENT_DEADLINE_ANNOTATION, AGENT_EVENT_ANNOTATION, AGENT_INTERRUPTION_TAINT

AGENT = Path(sys.executable).with_name("spotrain-agent")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


# A route answers (status, headers, body); it may sleep to play a slow server.
Route = Callable[[Request], tuple[int, dict[str, str], bytes]]


@dataclass
class FakeMetadataServer:
    """A metadata service on 127.0.0.1 whose answers the test scripts; records every request."""

    routes: dict[tuple[str, str], Route]
    requests: list[Request] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self, port: int = 0) -> FakeMetadataServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, parsed.path, urllib.parse.parse_qs(parsed.query),
                              {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                outer.requests.append(req)
                route = outer.routes.get((self.command, parsed.path))
                status, headers, body = route(req) if route else (404, {}, b"not found")
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): that is the point of a slow route

            do_GET = _handle
            do_PUT = _handle
            do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # do not wait for a slow route's sleeping handler
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def hits(self, method: str, path: str) -> list[Request]:
        return [r for r in list(self.requests) if (r.method, r.path) == (method, path)]


@dataclass(frozen=True)
class NodeMark:
    taint: str | None  # the value of the interruption taint; None: no taint
    deadline: str | None
    event: str | None
    annotations: dict[str, str]


class Harness:
    def __init__(self, devcluster: DevCluster, core: client.CoreV1Api, tmp_path: Path, pycache: Path):
        self.pycache = pycache
        self.devcluster = devcluster
        self.core = core
        self.tmp_path = tmp_path
        self.sim = NodeSimulator.from_kubeconfig(devcluster.kubeconfig)
        self.nodes: list[str] = []
        self.procs: list[processes.ManagedProcess] = []
        self.servers: list[FakeMetadataServer] = []

    # -- nodes ----------------------------------------------------------------------------------------------

    def node(self, pool: str = "spot-cpu", zone: str = "us-east-1a") -> str:
        name = self.sim.add(pool, zone)
        self.nodes.append(name)
        return name

    def mark(self, node: str) -> NodeMark:
        n = self.core.read_node(node)
        taint = next((t for t in n.spec.taints or [] if t.key == AGENT_INTERRUPTION_TAINT), None)
        annotations = dict(n.metadata.annotations or {})
        return NodeMark(None if taint is None else (taint.value or ""),
                        annotations.get(AGENT_DEADLINE_ANNOTATION), annotations.get(AGENT_EVENT_ANNOTATION),
                        annotations)

    def effect(self, node: str) -> str | None:
        n = self.core.read_node(node)
        return next((t.effect for t in n.spec.taints or [] if t.key == AGENT_INTERRUPTION_TAINT), None)

    # -- processes ------------------------------------------------------------------------------------------

    def process(self, name: str, argv: list[str | Path]) -> processes.ManagedProcess:
        # Where PYTHONDONTWRITEBYTECODE is set, every agent would compile the kubernetes client (seconds on a
        # loaded machine): the agents of one session share bytecode in a temporary directory instead.
        env = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(self.pycache)}
        proc = processes.start(f"{name}-{len(self.procs)}", argv, self.tmp_path / "logs", env=env)
        self.procs.append(proc)
        return proc

    def agent(self, node: str, provider: str, metadata_url: str, *extra: str,
              kubeconfig: Path | None = None) -> processes.ManagedProcess:
        """spotrain-agent as a process (admin's kubeconfig unless another is given)."""
        argv: list[str | Path] = [AGENT, "--provider", provider, "--node-name", node, "--metadata-url", metadata_url,
                                  "--kubeconfig", str(kubeconfig or self.devcluster.kubeconfig),
                                  "--log-format", "json", *extra]
        return self.process("spotrain-agent", argv)

    def ec2_metadata_mock(self, port: int, *args: str) -> processes.ManagedProcess:
        """amazon-ec2-metadata-mock on 127.0.0.1:port, once it listens."""
        proc = self.process("ec2-metadata-mock", [testbin.path("ec2-metadata-mock"), *args, "-n", "127.0.0.1",
                                                  "-p", str(port)])

        def listening() -> bool:
            # Any HTTP answer (401 with --imdsv2) says it listens; a refused connection raises and is retried.
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/latest/meta-data/instance-id", timeout=2).close()
            return True

        processes.wait_until("ec2-metadata-mock to listen", listening, [proc], timeout=30)
        return proc

    def server(self, routes: dict[tuple[str, str], Route], port: int = 0) -> FakeMetadataServer:
        srv = FakeMetadataServer(routes).start(port)
        self.servers.append(srv)
        return srv

    @staticmethod
    def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0,
                 agent: processes.ManagedProcess | None = None, interval: float = 0.2) -> Any:
        """``spotrain_dev.testing.wait_for``, failing at once with the agent's log when the agent exits, and naming
        its log tail on timeout."""

        def check_agent_alive() -> Any:
            value = check()
            if not value and agent is not None and not agent.alive():
                pytest.fail(f"spotrain-agent exited ({agent.popen.returncode}) waiting for {what}:\n"
                            f"{agent.log_tail(40)}")
            return value

        try:
            return wait_for(what, check_agent_alive, timeout=timeout, interval=interval)
        except AssertionError as exc:
            if agent is None:
                raise
            raise AssertionError(f"{exc}\nagent log:\n{agent.log_tail(40)}") from None

    @staticmethod
    def log_lines(proc: processes.ManagedProcess) -> list[dict[str, Any]]:
        lines = []
        for line in proc.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                lines.append(entry)
        return lines

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5)
        for srv in self.servers:
            srv.stop()
        for name in self.nodes:
            self.sim.remove(name)


@pytest.fixture(scope="session")
def agent_pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agent-pycache")


@pytest.fixture
def harness(devcluster: DevCluster, core: client.CoreV1Api, tmp_path: Path, agent_pycache: Path) -> Iterator[Harness]:
    assert shutil.which(str(AGENT)), f"{AGENT} is not installed (pip install -e .)"
    h = Harness(devcluster, core, tmp_path, agent_pycache)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def metadata_server() -> Iterator[Callable[..., FakeMetadataServer]]:
    """Starts FakeMetadataServers (no cluster needed); all are stopped after the test."""
    servers: list[FakeMetadataServer] = []

    def make(routes: dict[tuple[str, str], Route], port: int = 0) -> FakeMetadataServer:
        srv = FakeMetadataServer(routes).start(port)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()
