"""spotrain-agent on a node of a provider it does not know (kind, KWOK) idles: healthy, ready, polling nothing.
Before, it exited and the DaemonSet crash-looped, so `helm install --wait` on kind never finished."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from spotrain_operator.agent import health
from spotrain_operator.agent import main as agent_main


class ProviderIdMarker:
    def __init__(self, provider_id: str):
        self.provider_id = provider_id
        self.reads = 0

    def read(self, name: str) -> client.V1Node:
        self.reads += 1
        return client.V1Node(metadata=client.V1ObjectMeta(name=name),
                             spec=client.V1NodeSpec(provider_id=self.provider_id))

    def mark(self, *args: Any) -> None:
        raise AssertionError("an idle agent marks nothing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_for_server(port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("provider_id", ["kind://docker/kind/kind-worker", "kwok://spot-a-1"])
def test_unknown_provider_idles_healthy_and_ready_without_polling(
        provider_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_source(*args: Any) -> None:
        raise AssertionError("an idle agent builds no metadata client")

    monkeypatch.setattr(agent_main, "build_source", no_source)
    port = _free_port()
    args = agent_main.parse_args(["--node-name", "kind-worker", "--health-port", str(port),
                                  "--health-bind", "127.0.0.1"])
    marker = ProviderIdMarker(provider_id)
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent_main.run(args, marker, stop)))  # type: ignore[arg-type]
    thread.start()
    try:
        _wait_for_server(port)
        healthz, body = _get(port, "/healthz")
        readyz, _ = _get(port, "/readyz")
        assert (healthz, readyz) == (200, 200)
        assert body["status"] == "idle" and provider_id in body["lastError"]
        exposition = generate_latest(health.REGISTRY).decode()
        assert 'spotrain_agent_info{provider="none"} 1.0' in exposition
        assert marker.reads == 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]


def test_an_idle_agent_never_goes_stale() -> None:
    now = [0.0]
    state = health.HealthState(stale_after=30.0, clock=lambda: now[0])
    state.go_idle("kind://x")
    now[0] = 1e6
    alive, body = state.snapshot()
    assert alive and body["status"] == "idle"
