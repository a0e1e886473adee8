"""Leader election against the real API server: a replica whose Lease calls stop being answered (a loopback
proxy in front of the API server, frozen) stops acting before the other takes over; a replica that shuts down
hands the Lease over at once, and the operator does so on SIGTERM."""

from __future__ import annotations

import select
import signal
import socket
import threading
import urllib.parse
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from spotrain_dev.cluster import DevCluster
from spotrain_dev.testing import Harness, wait_for
from spotrain_operator.leader import ElectionTiming, LeaderElector

# A short lease keeps the test short; the margin between the renew deadline and the lease is what keeps two
# replicas from acting at once, and it is kept wide for a loaded machine.
TIMING = ElectionTiming(lease_seconds=6, renew_deadline=2, retry_period=0.25)


class FreezableProxy:
    """Forwards loopback TCP connections to ``target``; once frozen, it forwards nothing and answers nothing (new
    connections are accepted and left hanging), like an API server that stopped answering."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.frozen = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(downstream)
            if self.frozen.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(self.target)
            self.sockets.append(upstream)
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.closed.is_set():
            if self.frozen.is_set():
                self.closed.wait(0.1)
                continue
            try:
                readable, _, _ = select.select(list(peers), [], [], 0.1)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.closed.set()
        for s in self.sockets:
            s.close()


@pytest.fixture
def proxy(devcluster: DevCluster) -> Iterator[FreezableProxy]:
    url = urllib.parse.urlsplit(devcluster.apiserver_url)
    p = FreezableProxy((url.hostname or "127.0.0.1", url.port or 443))
    yield p
    p.close()


def through(devcluster: DevCluster, proxy: FreezableProxy) -> client.ApiClient:
    api = config.new_client_from_config(config_file=str(devcluster.kubeconfig))
    api.configuration.host = f"https://127.0.0.1:{proxy.port}"  # the same certificate: it names 127.0.0.1
    return api


class Timeline:
    """What each replica did, in the order it happened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[str] = []

    def add(self, entry: str) -> None:
        with self.lock:
            self.entries.append(entry)


def test_a_lease_call_that_never_answers_does_not_leave_two_replicas_acting(
        devcluster: DevCluster, api_client: client.ApiClient, proxy: FreezableProxy, namespace: str) -> None:
    timeline = Timeline()
    a = LeaderElector(through(devcluster, proxy), namespace, "spotrain", "a", TIMING,
                      on_lost=lambda reason: timeline.add(f"a stops: {reason}"))
    b = LeaderElector(api_client, namespace, "spotrain", "b", TIMING, on_lost=lambda reason: timeline.add("b stops"))
    a.acquire()
    timeline.add("a leads")
    a.keep()

    def follow() -> None:
        b.acquire()
        timeline.add("b leads")

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    wait_for("b watching the Lease", lambda: b._observed is not None)
    proxy.frozen.set()  # from now on a's Lease calls hang until their timeout
    wait_for("b leads", lambda: "b leads" in timeline.entries, timeout=60)
    assert timeline.entries[0] == "a leads"
    assert timeline.entries[1].startswith("a stops: no renewal succeeded"), timeline.entries
    assert timeline.entries[2] == "b leads", timeline.entries
    assert not a.may_act() and b.may_act()
    b.release()


def test_release_hands_the_lease_over_at_once(api_client: client.ApiClient, namespace: str) -> None:
    a = LeaderElector(api_client, namespace, "spotrain", "a", TIMING, on_lost=lambda reason: None)
    b = LeaderElector(api_client, namespace, "spotrain", "b", TIMING, on_lost=lambda reason: None)
    a.acquire()
    assert not b.try_acquire_or_renew()
    a.release()
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease("spotrain", namespace)
    assert (lease.spec.holder_identity or "", lease.spec.lease_duration_seconds) == ("", 1)
    assert b.try_acquire_or_renew()  # at once, without waiting out a lease
    b.release()


def test_the_operator_releases_its_lease_on_sigterm(harness: Harness) -> None:
    coordination = client.CoordinationV1Api(harness.api)
    operator = harness.start_operator("--leader-elect", "--leader-election-namespace", harness.namespace,
                                      "--lease-name", "spotrain-test")

    def holder() -> str:
        try:
            return coordination.read_namespaced_lease("spotrain-test", harness.namespace).spec.holder_identity or ""
        except client.ApiException:
            return ""

    wait_for("the operator holds the Lease", holder)
    wait_for("the operator started", lambda: "operator starting" in harness.operator_log())
    harness.kill(operator, signal.SIGTERM)
    assert operator.returncode == 0, harness.operator_log()
    lease = coordination.read_namespaced_lease("spotrain-test", harness.namespace)
    assert (lease.spec.holder_identity or "", lease.spec.lease_duration_seconds) == ("", 1), harness.operator_log()
