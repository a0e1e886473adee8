"""Harness for the trainer's own tests and benchmarks (no torch import): tagged processes, ports, a standalone
rendezvous store, a moto S3 server, a fault-injecting HTTP proxy and elastic jobs of several pods on loopback.
Everything binds to 127.0.0.1. Users' tests want :mod:`spotrain_trainer.testing` instead.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from spotrain_dev.testing import wait_for
from spotrain_protocol import CheckpointRequest, WorkerEnv, envvars
from spotrain_protocol.constants import CHECKPOINT_PATH, STATUS_FILE, STATUS_PATH
from spotrain_trainer.processes import kill_tree, proc_files, process_tree
from spotrain_trainer.statefiles import read_json

LOOPBACK = "127.0.0.1"
TOKEN_ENV = "SPOTRAIN_TEST_TOKEN"

#: Credentials and region for a moto server (any value works; set so boto3's default chain finds them).
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


# ------------------------------------------------------------------------------------------------ processes
def pids_with_token(token: str) -> list[int]:
    needle = f"{TOKEN_ENV}={token}".encode()
    return [pid for pid, env in proc_files("environ") if pid != os.getpid() and needle in env.split(b"\0")]


class ProcessSet:
    """Starts processes tagged with a unique token in their environment, so that every one of them and
    everything they start (torchrun workers included, even orphaned ones) can be killed at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.token = uuid.uuid4().hex
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env[TOKEN_ENV] = self.token
        # Tests start many short-lived Python processes that import torch; without a bytecode cache each one
        # compiles torch's sources again (~6 s of CPU). Keep the cache outside the venv.
        if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
            env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "spotrain-pycache"))
        env.setdefault("OMP_NUM_THREADS", "1")
        if extra:
            env.update(extra)
        return env

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in kill_all
        self._logs.append(log)
        full_env = dict(env) if env is not None else self.env()
        full_env[TOKEN_ENV] = self.token
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def log_text(self, name: str) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill_all(self) -> None:
        for _ in range(3):
            pids = set(pids_with_token(self.token))
            for proc in self.procs:
                if proc.poll() is None:
                    pids.update(process_tree(proc.pid))
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
        for log in self._logs:
            log.close()


def start_store(procs: ProcessSet, port: int, host: str = LOOPBACK, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """A standalone c10d TCPStore in its own process (``python -m spotrain_trainer.rendezvous``)."""
    argv = [sys.executable, "-m", "spotrain_trainer.rendezvous", "--host", host, "--port", str(port)]
    proc = procs.spawn("store", argv)
    wait_for(f"TCPStore on {host}:{port}", lambda: proc.poll() is None and port_open(host, port), timeout, interval=0.1)
    return proc


def moto_server_argv(port: int, host: str = LOOPBACK) -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe), "-H", host, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]


def start_moto(procs: ProcessSet, port: int, host: str = LOOPBACK, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    proc = procs.spawn("moto", moto_server_argv(port, host))

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {procs.log_text('moto')[-2000:]}")
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/moto-api/")
            return conn.getresponse().status < 500
        finally:
            conn.close()

    # Connection refused or reset until it listens: not yet.
    wait_for(f"moto server on {host}:{port}", ready, timeout, interval=0.1, retry_on=(OSError,))
    return proc


# ----------------------------------------------------------------------------------------------- fault proxy
@dataclass
class FaultRule:
    """Inject ``kind`` into matching requests: ``slowdown`` (503 SlowDown), ``500`` (InternalError), ``503``
    (ServiceUnavailable), ``reset`` (connection reset before forwarding), ``reset_after`` (forward, then reset
    instead of answering: the request took effect but the client never learns), ``hang`` (hold the request
    until :meth:`FaultProxy.release`, then reset the connection without forwarding: a request that never
    reached the store, e.g. because the client was killed meanwhile). ``times``: how many matching
    requests to fault (None: all); ``every``: fault one matching request in ``every``; ``after``: let the
    first ``after`` matching requests through untouched."""

    kind: str
    method: str | None = None
    path: str | None = None  # regex searched in the request path (including the query)
    times: int | None = 1
    every: int = 1
    after: int = 0
    seen: int = 0
    injected: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return not (self.path and not re.search(self.path, path))


@dataclass
class ProxyStats:
    requests: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, fault or "forward")
    faulted: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, fault)


_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
}

_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}</Message>'
    "<RequestId>spotrain-fault</RequestId></Error>"
)


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of an S3 endpoint that injects faults by rule."""

    def __init__(self, upstream_host: str, upstream_port: int, host: str = LOOPBACK, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rules: list[FaultRule] = []
        self.stats = ProxyStats()
        self.hanging = 0
        self._release = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        line = self.rfile.readline()
                        size = int(line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reset(self) -> None:
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    self.connection.close()
                self.close_connection = True

            def _error(self, status: int, code: str, msg: str) -> None:
                body = _ERROR_XML.format(code=code, msg=msg).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._pick(self.command, self.path)
                with proxy._lock:
                    proxy.stats.requests += 1
                    proxy.stats.log.append((self.command, self.path, fault or "forward"))
                if fault == "hang":
                    with proxy._lock:
                        proxy.hanging += 1
                    proxy._release.wait(timeout=600)
                    self._reset()
                    return
                if fault == "reset":
                    self._reset()
                    return
                if fault == "slowdown":
                    self._error(503, "SlowDown", "Please reduce your request rate.")
                    return
                if fault == "503":
                    self._error(503, "ServiceUnavailable", "Service is unable to handle request.")
                    return
                if fault == "500":
                    self._error(500, "InternalError", "We encountered an internal error. Please try again.")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body if body else None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    resp_headers = resp.getheaders()
                    status = resp.status
                finally:
                    conn.close()
                if fault == "reset_after":
                    self._reset()
                    return
                self.send_response(status)
                for k, v in resp_headers:
                    if k.lower() in _HOP:
                        continue
                    self.send_header(k, v)
                if self.command == "HEAD":
                    lengths = [v for k, v in resp_headers if k.lower() == "content-length"]
                    self.send_header("Content-Length", lengths[0] if lengths else "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD" and data:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _pick(self, method: str, path: str) -> str | None:
        with self._lock:
            for rule in self.rules:
                if not rule.matches(method, path):
                    continue
                if rule.times is not None and rule.injected >= rule.times:
                    continue
                rule.seen += 1
                if rule.seen <= rule.after or (rule.seen - rule.after - 1) % rule.every:
                    continue
                rule.injected += 1
                self.stats.injected[rule.kind] = self.stats.injected.get(rule.kind, 0) + 1
                self.stats.faulted.append((method, path, rule.kind))
                return rule.kind
        return None

    def release(self) -> None:
        """Let requests held by ``hang`` rules through."""
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------- HTTP bits
def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """A tiny JSON HTTP client for the control server (loopback only)."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
    if not m:
        raise ValueError(url)
    host, port, path = m.group(1), int(m.group(2)), m.group(3) or "/"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        ctype = resp.getheader("Content-Type") or ""
        return resp.status, (json.loads(raw) if "json" in ctype and raw else raw.decode(errors="replace"))
    finally:
        conn.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


# --------------------------------------------------------------------------------------- a job on loopback
# Short timeouts for tests: a lost node is noticed after ~3 s of missed heartbeats; after the minimum number of
# nodes joined, a round waits 3 s for more (agents started together on a loaded machine join seconds apart).
RDZV_CONF_FAST = "last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=3,join_timeout=180"


def launcher_argv() -> list[str]:
    exe = Path(sys.executable).with_name("spotrain-launch")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "spotrain_trainer.launch"]


@dataclass
class Pod:
    """One simulated worker pod: one ``spotrain-launch`` (torchrun agent) with its own state directory,
    staging directory, termination log and control port."""

    name: str
    dir: Path
    control_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def termination_log(self) -> Path:
        return self.dir / "termination-log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.control_port}"

    def status(self) -> dict[str, Any] | None:
        return read_json(self.state_dir / STATUS_FILE)

    def http_status(self) -> dict[str, Any]:
        code, body = http_json("GET", self.url + STATUS_PATH)
        if code != 200 or not isinstance(body, dict):
            raise RuntimeError(f"GET /status: {code} {body!r}")
        return body

    def post_checkpoint(self, request_id: str, reason: str = "test", deadline: str | None = None) -> tuple[int, Any]:
        body = CheckpointRequest(id=request_id, reason=reason, deadline=deadline).to_json()
        return http_json("POST", self.url + CHECKPOINT_PATH, body)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalJob:
    """An elastic job on loopback: a standalone store (started by the caller), agents started with
    ``spotrain-launch`` exactly as in a pod, a shared loss log, and helpers to read what happened."""

    def __init__(
        self,
        procs: ProcessSet,
        workdir: Path,
        *,
        store_port: int,
        checkpoint_uri: str,
        script: Sequence[str],
        env: Mapping[str, str] | None = None,
        min_nodes: int = 1,
        max_nodes: int = 2,
        nproc_per_node: int = 1,
        job_name: str = "tiny",
    ) -> None:
        self.procs = procs
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_port = store_port
        self.checkpoint_uri = checkpoint_uri
        self.script = list(script)
        self.extra_env = dict(env or {})
        self.min_nodes = min_nodes
        self.max_nodes = max_nodes
        self.nproc_per_node = nproc_per_node
        self.job_name = job_name
        self.rdzv_id = f"{job_name}-{uuid.uuid4().hex[:8]}"
        self.loss_log = self.workdir / "loss.jsonl"
        self.pods: dict[str, Pod] = {}

    def pod_env(self, name: str, pod_dir: Path, control_port: int) -> dict[str, str]:
        env = {
            **WorkerEnv(
                job_name=self.job_name,
                namespace="test",
                rdzv_endpoint=f"{LOOPBACK}:{self.store_port}",
                rdzv_id=self.rdzv_id,
                min_nodes=self.min_nodes,
                max_nodes=self.max_nodes,
                nproc_per_node=self.nproc_per_node,
                checkpoint_uri=self.checkpoint_uri,
                state_dir=str(pod_dir / "state"),
                staging_dir=str(pod_dir / "staging"),
                termination_log=str(pod_dir / "termination-log"),
                control_port=control_port,
                control_bind=LOOPBACK,
            ).to_env(),
            "POD_NAME": name,
            "POD_IP": LOOPBACK,
            envvars.RDZV_CONF_EXTRA: RDZV_CONF_FAST,
            "TINY_LOSS_LOG": str(self.loss_log),
        }
        env.update(self.extra_env)
        return self.procs.env(env)

    def start_pod(self, name: str, extra_env: Mapping[str, str] | None = None) -> Pod:
        pod_dir = self.workdir / name
        pod_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = self.pod_env(name, pod_dir, port)
        if extra_env:
            env.update(extra_env)
        pod = Pod(name=name, dir=pod_dir, control_port=port, env=env)
        pod.proc = self.procs.spawn(name, [*launcher_argv(), "--", *self.script], env=env)
        self.pods[name] = pod
        return pod

    def run_single(
        self, name: str, args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the script as one plain process (no torchrun): a world of one."""
        pod_dir = self.workdir / name
        pod_dir.mkdir(parents=True, exist_ok=True)
        env = self.pod_env(name, pod_dir, free_port())
        for key in (envvars.RDZV_ENDPOINT, envvars.RDZV_ID):
            env.pop(key, None)
        if extra_env:
            env.update(extra_env)
        proc = self.procs.spawn(name, [sys.executable, *self.script, *args], env=env)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, self.procs.log_text(name).encode(), b"")

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.loss_log)

    def losses(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if "loss" in r]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records() if "event" in r and (kind is None or r["event"] == kind)]

    def kill_pod(self, pod: Pod, sig: int = signal.SIGKILL) -> list[int]:
        """Signal the pod's agent and, for SIGKILL, everything it started (a node that vanishes)."""
        assert pod.proc is not None
        if sig == signal.SIGKILL:
            return kill_tree(pod.proc.pid, sig)
        os.kill(pod.proc.pid, sig)
        return [pod.proc.pid]

    def logs(self) -> str:
        return "\n".join(f"===== {name} =====\n{self.procs.log_text(name)[-6000:]}" for name in self.pods)
