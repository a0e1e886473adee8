"""The per-pod control endpoint (stdlib ``http.server``, threaded; no torch).

It talks to the workers only through files in the per-pod state directory (``SPOTRAIN_STATE_DIR``), so it
keeps answering while workers restart between rendezvous rounds:

* ``POST /checkpoint`` ``{"id": "...", "reason": "...", "deadline": "<RFC3339>" | null, "issued_at": "<RFC3339>"}``
  writes ``request.json`` (atomically) and answers ``202 {"accepted": true, "id": ...}``; posting the same id
  again is a no-op that answers the same. The local rank 0 worker sees the file at its next step, all ranks take
  a coordinated checkpoint, and once it is durable the worker records ``handled_request_id`` and
  ``last_checkpoint.request_id`` in ``status.json``.
* ``GET /status`` the worker's ``status.json`` plus the pending request (``checkpoint_request``).
* ``GET /metrics`` Prometheus text. ``GET /healthz`` ``ok``.

Security (see docs/security.md):

* With a token configured (``SPOTRAIN_CONTROL_TOKEN``, which the operator fills from the job's control Secret, or
  ``SPOTRAIN_CONTROL_TOKEN_FILE``), ``POST /checkpoint`` and ``GET /status`` need ``Authorization: Bearer
  <token>`` (compared in constant time) and answer 401 otherwise; ``/healthz``, ``/readyz`` and ``/metrics`` stay
  open for probes and scrapers (the metrics carry no bucket path and no request ids).
* The request slot holds one pending request. A different id replaces an unhandled one only when it is newer:
  its ``issued_at`` is later than the pending one's (or the pending one has none). An older or undated request
  gets 409 and the pending one stays, so a delayed retry (or a deposed operator replica) cannot push back the
  checkpoint a drain is waiting for. Once the pending request is handled, any new id is accepted.
* Every request body needs a Content-Length of at most ``MAX_BODY`` (411/400/413 otherwise); sockets time out
  after ``SOCKET_TIMEOUT`` seconds and at most ``MAX_CONNECTIONS`` are served at once (more are closed at
  accept), so idle or slow clients cannot hold every thread. Nothing here touches the training loop: a bad
  request only ever gets a 4xx.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from spotrain_protocol import CheckpointRequest, InvalidMessage, RendezvousMove, envvars
from spotrain_protocol import status as keys
from spotrain_protocol.constants import (
    AUTHORIZATION_HEADER,
    CHECKPOINT_PATH,
    CONTROL_PORT,
    DEFAULT_STATE_DIR,
    RENDEZVOUS_FILE,
    RENDEZVOUS_PATH,
    REQUEST_FILE,
    STATUS_FILE,
    STATUS_PATH,
    presented_token,
)
from spotrain_protocol.messages import parse_rfc3339

from .checkpoint.commit import utc_now_rfc3339
from .config import env_int, env_str
from .constants import PHASES
from .statefiles import atomic_write_json, read_json
from .status import default_status

log = logging.getLogger("spotrain_trainer.server")

MAX_BODY = 64 * 1024
SOCKET_TIMEOUT = 10.0
MAX_CONNECTIONS = 32


def supersedes(new: CheckpointRequest, pending: dict[str, Any]) -> bool:
    """Whether ``new`` may replace the unhandled ``pending`` request (as recorded): only a request issued later
    does."""
    if not isinstance(pending.get("issued_at"), str):
        return True  # nothing to order by (written by an older operator): the latest caller wins, as before
    if new.issued_at is None:
        return False
    try:
        return parse_rfc3339("issued_at", new.issued_at) > parse_rfc3339("issued_at", pending["issued_at"])
    except InvalidMessage:
        return True  # a pending record that does not parse cannot be protected


class ConflictError(Exception):
    """A newer request is pending (or a newer rendezvous recorded); the one posted is refused (409) and the other
    stays."""

    def __init__(self, pending_id: str) -> None:
        super().__init__(f"{pending_id} is newer; it stays")
        self.pending_id = pending_id


class ControlState:
    """Reads and writes the state directory on behalf of the HTTP handlers."""

    def __init__(self, state_dir: Path, *, job: str, pod: str, namespace: str | None = None,
                 token: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.job = job
        self.pod = pod
        self.namespace = namespace
        self.token = token or None
        self._lock = threading.Lock()
        self.state_dir.mkdir(parents=True, exist_ok=True)

    @property
    def request_path(self) -> Path:
        return self.state_dir / REQUEST_FILE

    @property
    def status_path(self) -> Path:
        return self.state_dir / STATUS_FILE

    def submit(self, req: CheckpointRequest) -> dict[str, Any]:
        with self._lock:
            worker = read_json(self.status_path) or {}
            handled = worker.get(keys.HANDLED_REQUEST_ID)
            if handled == req.id:
                return {"accepted": True, "id": req.id, "handled": True}
            existing = read_json(self.request_path)
            if existing and existing.get("id") == req.id:
                return {"accepted": True, "id": req.id, "duplicate": True}
            if existing and existing.get("id") != handled and not supersedes(req, existing):
                raise ConflictError(str(existing.get("id")))
            record = req.to_json()
            record["received_at"] = utc_now_rfc3339()
            atomic_write_json(self.request_path, record)
            log.warning("checkpoint request %s accepted (reason %s, deadline %s)", req.id, req.reason, req.deadline)
            return {"accepted": True, "id": req.id}

    @property
    def rendezvous_path(self) -> Path:
        return self.state_dir / RENDEZVOUS_FILE

    def move_rendezvous(self, move: RendezvousMove) -> dict[str, Any]:
        """Records where the job's rendezvous store moved; the agent (spotrain_trainer.agent) re-joins there. A
        move to an older round than the one recorded is refused (an operator that failed over may resend one)."""
        with self._lock:
            recorded = read_json(self.rendezvous_path) or {}
            if recorded.get("id") == move.id:
                return {"accepted": True, "id": move.id, "duplicate": True}
            if isinstance(recorded.get("round"), int) and recorded["round"] > move.round:
                raise ConflictError(str(recorded.get("id")))
            atomic_write_json(self.rendezvous_path, move.to_json())
            log.warning("rendezvous moved to %s (round %d, id %s): the agent re-joins there", move.endpoint,
                        move.round, move.id)
            return {"accepted": True, "id": move.id}

    def status(self) -> dict[str, Any]:
        now = time.time()
        out = default_status(self.job, self.pod)
        worker = read_json(self.status_path)
        if worker:
            out.update(worker)
        out["job"] = self.job
        out["pod"] = self.pod
        out["namespace"] = self.namespace
        if out.get("phase") not in PHASES:
            out["phase"] = "starting"
        req = read_json(self.request_path)
        handled = out.get(keys.HANDLED_REQUEST_ID)
        if req and isinstance(req.get("id"), str) and req["id"] != handled:
            out[keys.CHECKPOINT_REQUEST] = {
                keys.REQUEST_ID: req["id"],
                "reason": req.get("reason"),
                "deadline": req.get("deadline"),
                "issued_at": req.get("issued_at"),
                "received_at": req.get("received_at"),
            }
        else:
            out[keys.CHECKPOINT_REQUEST] = None
        last = out.get(keys.LAST_CHECKPOINT)
        if isinstance(last, dict) and last.get("unix_time"):
            out["last_checkpoint_age_seconds"] = round(max(0.0, now - float(last["unix_time"])), 3)
        else:
            out["last_checkpoint_age_seconds"] = None
        updated = out.get("updated_unix")
        out["status_age_seconds"] = None if not updated else round(max(0.0, now - float(updated)), 3)
        out["server_time"] = utc_now_rfc3339(now)
        return out

    def metrics(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.status()
        labels = ["job", "pod"]
        lv = [self.job, self.pod]

        def num(value: Any) -> float | None:
            if isinstance(value, bool):
                return 1.0 if value else 0.0
            if isinstance(value, int | float):
                return float(value)
            return None

        class Collector:
            def collect(self) -> Any:
                def gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily | None:
                    v = num(value)
                    if v is None:
                        return None
                    g = GaugeMetricFamily(f"spotrain_trainer_{name}", doc, labels=labels)
                    g.add_metric(lv, v)
                    return g

                last = status.get(keys.LAST_CHECKPOINT) or {}
                gauges = [
                    gauge("step", "Steps completed (the step the worker is at).", status.get(keys.STEP)),
                    gauge("steps_per_second", "Training throughput (EWMA).", status.get("steps_per_second")),
                    gauge("world_size", "Number of ranks in the current rendezvous round.", status.get("world_size")),
                    gauge("restart_count", "Worker group restarts of this pod's agent.", status.get("restart_count")),
                    gauge("last_checkpoint_step", "Step of the newest durable checkpoint.",
                          last.get(keys.CHECKPOINT_STEP)),
                    gauge(
                        "last_checkpoint_age_seconds",
                        "Seconds since the newest durable checkpoint was committed.",
                        status.get("last_checkpoint_age_seconds"),
                    ),
                    gauge(
                        "last_checkpoint_duration_seconds",
                        "Start-to-durable time of the newest checkpoint.",
                        last.get("duration_seconds"),
                    ),
                    gauge("last_checkpoint_bytes", "Size of the newest checkpoint.", last.get("bytes")),
                    gauge(
                        "last_checkpoint_stall_seconds",
                        "Training stall caused by the newest checkpoint.",
                        last.get("stall_seconds"),
                    ),
                    gauge(
                        "checkpoint_interval_seconds",
                        "Current interval between regular checkpoints.",
                        status.get("checkpoint_interval_seconds"),
                    ),
                    gauge(
                        "checkpoint_request_pending",
                        "1 while a checkpoint request has not been handled.",
                        status.get(keys.CHECKPOINT_REQUEST) is not None,
                    ),
                    gauge("completed", "1 once the job completed.", bool(status.get(keys.COMPLETED))),
                    gauge("status_age_seconds", "Age of the worker's status file.", status.get("status_age_seconds")),
                ]
                yield from (g for g in gauges if g is not None)
                phase = GaugeMetricFamily(
                    "spotrain_trainer_phase", "Current phase (1 for the active one).", labels=[*labels, "phase"]
                )
                for p in PHASES:
                    phase.add_metric([*lv, p], 1.0 if status.get("phase") == p else 0.0)
                yield phase
                totals = status.get("checkpoints_total") or {}
                c = CounterMetricFamily(
                    "spotrain_trainer_checkpoints", "Durable checkpoints by kind.", labels=[*labels, "kind"]
                )
                for kind in sorted(set(totals) | {"regular", "notice", "final"}):
                    c.add_metric([*lv, kind], float(totals.get(kind, 0)))
                yield c
                f = CounterMetricFamily("spotrain_trainer_checkpoint_failures", "Failed checkpoints.", labels=labels)
                f.add_metric(lv, float(status.get("checkpoint_failures_total") or 0))
                yield f
                s = CounterMetricFamily(
                    "spotrain_trainer_checkpoint_stall_seconds", "Total training stall for checkpoints.", labels=labels
                )
                s.add_metric(lv, float(status.get("stall_seconds_total") or 0.0))
                yield s

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector())
        return generate_latest(registry)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ControlHTTPServer
    # StreamRequestHandler sets this on the socket: a client idle (or trickling) this long is dropped.
    timeout = SOCKET_TIMEOUT
    # A request line without a version would otherwise be answered as HTTP/0.9: a bare body, no status line.
    default_request_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, (json.dumps(obj, sort_keys=True) + "\n").encode(), "application/json")

    def _authorized(self) -> bool:
        """Answers 401 and returns False unless the request carries the job's token (when one is configured)."""
        token = self.server.state.token
        if token is None:
            return True
        given = presented_token(self.headers.get(AUTHORIZATION_HEADER))
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            return True
        self.send_response(HTTPStatus.UNAUTHORIZED)
        body = b'{"error": "a bearer token is required"}\n'
        self.send_header("WWW-Authenticate", 'Bearer realm="spotrain-control"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return False

    def _read_body(self) -> bytes | None:
        """The body within MAX_BODY, or None after answering 4xx. Every request's body is bounded, whatever
        its method: an unread body would otherwise be parsed as the next request on the connection."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "chunked bodies are not accepted; send Content-Length"})
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.command == "POST":
                self.close_connection = True
                self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
                return None
            return b""
        if not raw.strip().isdigit():
            self.close_connection = True
            self._json(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
            return None
        length = int(raw)
        if length > MAX_BODY:
            self.close_connection = True
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY} bytes"})
            return None
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True
            self._json(HTTPStatus.BAD_REQUEST, {"error": "body shorter than Content-Length"})
            return None
        return body

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        state = self.server.state
        if self._read_body() is None:
            return
        try:
            if path == STATUS_PATH:
                if self._authorized():
                    self._json(HTTPStatus.OK, state.status())
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST

                self._send(HTTPStatus.OK, state.metrics(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                self._send(HTTPStatus.OK, b"ok\n", "text/plain")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path {path}"})
        except Exception as exc:  # never take the server down
            log.exception("GET %s failed", path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if body is None:
            return
        if path not in (CHECKPOINT_PATH, RENDEZVOUS_PATH):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path {path}"})
            return
        if not self._authorized():
            return
        state = self.server.state
        try:
            message: CheckpointRequest | RendezvousMove = (
                CheckpointRequest.from_body(body) if path == CHECKPOINT_PATH else RendezvousMove.from_body(body))
        except InvalidMessage as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"accepted": False, "error": str(exc)})
            return
        try:
            result = (state.submit(message) if isinstance(message, CheckpointRequest)
                      else state.move_rendezvous(message))
        except ConflictError as exc:
            self._json(HTTPStatus.CONFLICT, {"accepted": False, "id": message.id, "pending": exc.pending_id,
                                             "error": str(exc)})
            return
        except OSError as exc:
            log.exception("could not record %s", path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"accepted": False, "error": str(exc)})
            return
        self._json(HTTPStatus.ACCEPTED, result)


class ControlHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: ControlState) -> None:
        self.state = state
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # One thread per connection, but never more than MAX_CONNECTIONS: past that, new connections are
        # closed at once instead of piling up threads (each may wait SOCKET_TIMEOUT on an idle client).
        if not self._slots.acquire(blocking=False):
            log.debug("connection from %s refused: %d connections open", client_address, MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def serve(state: ControlState, host: str, port: int) -> ControlHTTPServer:
    """Bind and serve in a background thread (for tests and embedding). Call ``shutdown()`` to stop."""
    server = ControlHTTPServer((host, port), state)
    threading.Thread(target=server.serve_forever, name="spotrain-control", daemon=True).start()
    return server


def control_token(env: Any) -> str | None:
    """The job's control token: ``SPOTRAIN_CONTROL_TOKEN``, else the file ``SPOTRAIN_CONTROL_TOKEN_FILE`` names."""
    token = (env.get(envvars.CONTROL_TOKEN) or "").strip()
    path = env.get(envvars.CONTROL_TOKEN_FILE)
    if not token and path:
        token = Path(path).read_text().strip()
    return token or None


def main() -> int:
    logging.basicConfig(
        level=os.environ.get(envvars.LOG_LEVEL, "INFO"),
        format="%(asctime)s %(levelname)s [control] %(name)s: %(message)s",
    )
    env = os.environ
    token = control_token(env)
    state = ControlState(
        Path(env_str(env, envvars.STATE_DIR, DEFAULT_STATE_DIR)),
        job=env_str(env, envvars.JOB_NAME, "local"),
        pod=env_str(env, "POD_NAME", os.uname().nodename),
        namespace=env.get(envvars.NAMESPACE),
        token=token,
    )
    if token is None:
        log.warning("no control token (%s): /checkpoint and /status are open to anyone who can reach this port",
                    envvars.CONTROL_TOKEN)
    host = env_str(env, envvars.CONTROL_BIND, "0.0.0.0")
    port = env_int(env, envvars.CONTROL_PORT, CONTROL_PORT, minimum=0)
    server = ControlHTTPServer((host, port), state)
    log.info("control server on %s:%d, state in %s", host, server.port, state.state_dir)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    launch_pid = env.get(envvars.LAUNCH_PID)
    if launch_pid and launch_pid.isdigit() and os.getppid() != int(launch_pid):
        log.warning("launcher %s is gone; exiting", launch_pid)
        return 0
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
