"""Test helpers: the operator as a real process against the devcluster, on nodes that belong to one test alone.

Each test gets its own namespace, its own KWOK nodes (labelled with the namespace, so that its jobs select
only them) and operators watching only that namespace; everything is removed afterwards.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.processes import die_with_parent, free_port
from spotrain_operator import wellknown as wk
from spotrain_operator.core.pods import CONTROL_TOKEN_KEY, JobRef
from spotrain_protocol import CONTROL_PORT, CheckpointRequest, InvalidMessage, RendezvousMove, TrainerStatus
from spotrain_protocol.constants import RENDEZVOUS_PATH

REPO = Path(__file__).resolve().parents[2]
TEST_LABEL = "test.spotrain.dev/namespace"
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 90.0,
    interval: float = 0.5,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``check`` until it returns something truthy and return that; after ``timeout`` seconds raise
    AssertionError naming ``what`` and the last result. An exception of a ``retry_on`` type counts as "not yet"
    (a server that does not listen yet); any other propagates at once."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except retry_on as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Harness:
    cluster: DevCluster
    namespace: str
    api: client.ApiClient
    nodes: NodeSimulator
    tmp: Path
    operators: list[subprocess.Popen[bytes]] = field(default_factory=list)
    metrics_ports: dict[int, int] = field(default_factory=dict)  # operator pid -> its metrics port
    created_nodes: list[str] = field(default_factory=list)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    # -- nodes --------------------------------------------------------------------------------------------

    def add_node(self, pool: str, zone: str) -> str:
        name = self.nodes.add(pool, zone, name=f"t{self.namespace[-5:]}-{pool}-{zone[-2:]}-{len(self.created_nodes)}",
                              labels={TEST_LABEL: self.namespace})
        self.created_nodes.append(name)
        return name

    def wait_nodes_ready(self, names: list[str]) -> None:
        wait_for("nodes Ready", lambda: self.nodes.ready_count(names) == len(names))

    # -- operator ------------------------------------------------------------------------------------------

    def start_operator(self, *extra: str) -> subprocess.Popen[bytes]:
        """Starts the operator process; its metrics are served on ``self.metrics_port`` (unless ``extra`` says
        otherwise), so that a test can wait for the operator to have looked (``wait_reconciles``)."""
        log = (self.tmp / f"operator-{len(self.operators)}.log").open("wb")
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "spotrain_operator.main", "--kubeconfig", str(self.cluster.kubeconfig),
             "--namespace", self.namespace, "--metrics-port", str(port), "--health-port", "0",
             "--resync", "2", *extra],
            # Dies with the test or benchmark that started it, even one killed with SIGKILL.
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        self.operators.append(process)
        self.metrics_ports[process.pid] = port
        return process

    def reconciles(self) -> float:
        """Reconcile passes the running operators have completed (spotrain_reconciles_total, every result)."""
        total = 0.0
        for process in self.operators:
            if process.poll() is not None:
                continue
            try:
                url = f"http://127.0.0.1:{self.metrics_ports[process.pid]}/metrics"
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                continue
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("spotrain_reconciles_total{"))
        return total

    def wait_reconciles(self, passes: int = 3, timeout: float = 90.0) -> None:
        """Waits until the operator has completed ``passes`` more reconcile passes: the positive sign that it
        looked at the world as it is now, before a test asserts that it did nothing."""
        start = self.reconciles()
        wait_for(f"{passes} more reconcile passes", lambda: self.reconciles() >= start + passes, timeout=timeout)

    def operator_log(self, index: int = 0) -> str:
        return (self.tmp / f"operator-{index}.log").read_text(errors="replace")

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if process.poll() is None:
            os.killpg(process.pid, sig)
            process.wait(30)

    # -- jobs ----------------------------------------------------------------------------------------------

    def job_manifest(self, name: str = "job", *, min_nodes: int = 2, max_nodes: int = 3,
                     pools: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
        """A job whose pools select only this test's nodes."""
        quickstart = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
        manifest: dict[str, Any] = copy.deepcopy(quickstart)
        manifest["metadata"] = {"name": name, "namespace": self.namespace}
        body = manifest["spec"]
        body["elastic"] = {"minNodes": min_nodes, "maxNodes": max_nodes, "scaleUpWindow": "3s"}
        body["placement"]["pools"] = pools or [
            self.pool("spot-cpu", "spot"),
            self.pool("on-demand", "on-demand"),
        ]
        body["fallback"] = {"pool": "on-demand", "after": "6s", "maxNodes": max_nodes}
        body.update(spec)
        return manifest

    def pool(self, devcluster_pool: str, capacity: str, **extra: Any) -> dict[str, Any]:
        return {"name": devcluster_pool, "capacityType": capacity,
                "nodeSelector": {"dev.spotrain.dev/pool": devcluster_pool, TEST_LABEL: self.namespace}, **extra}

    def create_job(self, manifest: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(wk.GROUP, wk.VERSION, self.namespace, wk.PLURAL, manifest)

    def patch_job(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(wk.GROUP, wk.VERSION, self.namespace, wk.PLURAL, name, patch)

    def job(self, name: str = "job") -> dict[str, Any]:
        job: dict[str, Any] = self.custom.get_namespaced_custom_object(wk.GROUP, wk.VERSION, self.namespace,
                                                                       wk.PLURAL, name)
        return job

    def status(self, name: str = "job") -> dict[str, Any]:
        return dict(self.job(name).get("status") or {})

    def pods(self, role: str = "worker", job: str = "job") -> list[client.V1Pod]:
        selector = f"{wk.JOB_LABEL}={job},{wk.ROLE_LABEL}={role}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def running_workers(self, job: str = "job") -> list[client.V1Pod]:
        pods = self.pods("worker", job)
        return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]

    def gone(self, pod: str) -> bool:
        """The pod no longer exists (not merely terminating)."""
        try:
            self.core.read_namespaced_pod(pod, self.namespace)
            return False
        except ApiException as e:
            return e.status == 404

    def control_token(self, name: str = "job") -> str | None:
        """The job's control-endpoint token, from the Secret the operator made for its workers (None before)."""
        job = self.job(name)
        ref = JobRef(name, self.namespace, job["metadata"]["uid"])
        try:
            secret = self.core.read_namespaced_secret(ref.control_secret, self.namespace)
        except ApiException:
            return None
        value = (secret.data or {}).get(CONTROL_TOKEN_KEY)
        return base64.b64decode(value).decode() if value else None

    def node_zone(self, node: str) -> str:
        return str(self.core.read_node(node).metadata.labels[wk.ZONE])

    def events(self, reason: str | None = None) -> list[client.CoreV1Event]:
        items = self.core.list_namespaced_event(self.namespace).items
        return [e for e in items if reason is None or e.reason == reason]

    def cleanup(self) -> None:
        for process in self.operators:
            self.kill(process)
        for name in self.created_nodes:
            self.nodes.remove(name)


class FakeTrainerEndpoints:
    """Stand-ins for the workers' control endpoints, bound on the KWOK pod IPs (loopback), for operator tests
    and benchmarks that need the checkpoint protocol but not torch: a POSTed request becomes durable after
    ``delay`` seconds, and a rendezvous move (POST /rendezvous) is reported as re-joined ``delay`` seconds after it.
    Every worker in the harness's namespace gets one, except the pods listed in ``unreachable``. ``serving`` names
    the pods with an endpoint; ``requests`` and ``moves`` hold what each pod was asked."""

    def __init__(self, harness: Harness, delay: float = 0.0, port: int = CONTROL_PORT):
        self.harness = harness
        self.delay, self.port = delay, port
        self.unreachable: set[str] = set()
        self.requests: dict[str, list[dict[str, Any]]] = {}
        self.moves: dict[str, list[dict[str, Any]]] = {}
        self.serving: set[str] = set()
        self.errors: list[str] = []  # endpoints that could not be bound
        self._pod_at: dict[str, str] = {}  # IP -> the pod that has it now (KWOK reuses IPs)
        self._servers: dict[str, ThreadingHTTPServer] = {}  # by IP
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> FakeTrainerEndpoints:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            try:
                workers = self._running_workers()
            except Exception:  # the API server may be busy or going away; try again next round
                continue
            for name, ip in workers:
                if name in self.unreachable or name in self.serving:
                    continue
                self._pod_at[ip] = name
                if ip not in self._servers:
                    try:
                        self._servers[ip] = self._serve(ip)
                    except OSError as e:
                        self.errors.append(f"{name} at {ip}: {e}")
                        continue
                self.serving.add(name)

    def _running_workers(self) -> list[tuple[str, str]]:
        """(name, IP) of the running workers, read as plain JSON: in the benchmark's 200-pod namespace, building
        client models five times a second would starve the endpoints' own threads of the GIL."""
        response = self.harness.core.list_namespaced_pod(
            self.harness.namespace, label_selector=f"{wk.ROLE_LABEL}=worker", _preload_content=False)
        pods = json.loads(response.data)["items"]
        return [(p["metadata"]["name"], p["status"]["podIP"]) for p in pods
                if p["status"].get("phase") == "Running" and p["status"].get("podIP")]

    def _serve(self, ip: str) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def received(self) -> list[dict[str, Any]]:
                return fake.requests.setdefault(fake._pod_at[ip], [])

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    if self.path == RENDEZVOUS_PATH:
                        move = RendezvousMove.from_body(body)
                        moves = fake.moves.setdefault(fake._pod_at[ip], [])
                        if not moves or moves[-1]["id"] != move.id:  # a move told again is the same move
                            moves.append({**move.to_json(), "at": time.monotonic()})
                    else:
                        request = CheckpointRequest.from_body(body)
                        self.received().append({**request.to_json(), "at": time.monotonic()})
                except InvalidMessage:
                    self.send_response(400)
                    self.end_headers()
                    return
                self.send_response(202)
                self.end_headers()

            def do_GET(self) -> None:
                # As the real control server answers: the request it holds until the checkpoint is durable, then
                # the checkpoint that answered it (spotrain_trainer.server.ControlState.status).
                received, status = self.received(), TrainerStatus(step=100)
                if received and time.monotonic() - received[-1]["at"] >= fake.delay:
                    handled = received[-1]["id"]
                    status = replace(status, checkpoint_step=100, checkpoint_uri="s3://fake/step-100",
                                     checkpoint_time="2026-01-01T00:00:00Z", checkpoint_request_id=handled,
                                     handled_request_id=handled)
                elif received:
                    status = replace(status, pending_request_id=received[-1]["id"])
                moved = fake.moves.get(fake._pod_at[ip])
                if moved and time.monotonic() - moved[-1]["at"] >= fake.delay:
                    status = replace(status, rendezvous_id=moved[-1]["id"])
                payload = json.dumps(status.to_json()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((ip, self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server
