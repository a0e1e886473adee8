"""Health endpoint, Prometheus counters and structured, rate-limited logging for spotrain-agent."""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
POLLS = Counter("spotrain_agent_metadata_polls", "Metadata service polls by result (ok, error).", ["result"],
                registry=REGISTRY)
INTERRUPTIONS = Counter("spotrain_agent_interruptions_seen", "Polls that found an interruption, by kind.",
                        ["kind"], registry=REGISTRY)
PATCHES = Counter("spotrain_agent_node_updates", "Node mark attempts by result (changed, unchanged, error).",
                  ["result"], registry=REGISTRY)
ACKS = Counter("spotrain_agent_acknowledgements", "Azure Scheduled Events acknowledgements by result.",
               ["result"], registry=REGISTRY)
METADATA_UP = Gauge("spotrain_agent_metadata_reachable", "1 when the last metadata poll succeeded.",
                    registry=REGISTRY)
# provider="none": the agent idles on a node of a provider it does not know (kind, KWOK), polling nothing; alerts
# on metadata reachability leave such agents out through this series.
INFO = Gauge("spotrain_agent_info", "1, labelled with the metadata service the agent polls (none: idle).",
             ["provider"], registry=REGISTRY)
IDLE_PROVIDER = "none"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, msg and the record's ``fields`` (``extra={"fields": {}}``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                          for k, v in fields.items()})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        text = f"{self.formatTime(record)} {record.levelname.lower()} {record.getMessage()}"
        if isinstance(fields, dict):
            text += "".join(f" {k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RateLimitedLogger:
    """Logs a message of a given key at most once per ``period`` seconds, counting what it held back."""

    def __init__(self, logger: logging.Logger, period: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.period = period
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, **fields: Any) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        self._last[key] = now
        self.logger.log(level, msg, extra={"fields": fields})
        return True

    def reset(self, key: str) -> None:
        self._last.pop(key, None)
        self._suppressed.pop(key, None)


class HealthState:
    """What the poll loop reports and the health endpoint serves."""

    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic):
        self.stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.last_loop = clock()
        self.metadata_ok = False
        self.last_error = ""
        self.marked: str | None = None
        self.provider = ""
        self.node = ""
        self.idle = False  # nothing to poll: healthy and ready for as long as the process runs

    def go_idle(self, provider_id: str | None) -> None:
        with self._lock:
            self.idle = True
            self.provider = IDLE_PROVIDER
            self.last_error = f"no metadata service for providerID {provider_id!r}; idle"

    def beat(self, metadata_ok: bool, error: str = "") -> None:
        with self._lock:
            self.last_loop = self._clock()
            self.metadata_ok = metadata_ok
            self.last_error = error

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = self._clock() - self.last_loop
            alive = self.idle or age < self.stale_after
            return alive, {
                "status": "idle" if self.idle else "ok" if alive else "stalled",
                "provider": self.provider,
                "node": self.node,
                "secondsSinceLastPoll": round(age, 1),
                "metadataReachable": self.metadata_ok,
                "lastError": self.last_error,
                "marked": self.marked,
            }


def serve(state: HealthState, bind: str, port: int) -> ThreadingHTTPServer:
    """Serves /healthz (the poll loop runs), /readyz (the metadata service answered last time) and /metrics
    in a daemon thread; returns the server (``server_address`` has the bound port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                return
            alive, body = state.snapshot()
            if path == "/healthz":
                ok = alive
            elif path == "/readyz":
                ok = alive and (body["status"] == "idle" or bool(body["metadataReachable"]))
            else:
                self._send(404, b"not found\n", "text/plain")
                return
            self._send(200 if ok else 503, json.dumps(body).encode() + b"\n", "application/json")

        def _send(self, code: int, data: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the useful lines

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
