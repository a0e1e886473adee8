"""Leader election against an in-memory Lease API and hand-driven clocks: expiry by locally observed time,
a leader that stops at its renew deadline, release on shutdown, and a timeout on every call."""

from __future__ import annotations

import copy
import datetime
import threading
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrain_operator.leader import ElectionTiming, LeaderElector

TIMING = ElectionTiming(lease_seconds=15, renew_deadline=10, retry_period=2)
T0 = datetime.datetime(2026, 1, 1, 8, 0, tzinfo=datetime.UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class LeaseAPI:
    """A Lease store with the API server's compare-and-swap on resourceVersion; every call must carry a request
    timeout; ``hang`` makes calls block until it is set again."""

    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.version = 0
        self.calls = 0
        self.answering = threading.Event()
        self.answering.set()

    def _call(self, kwargs: dict[str, Any]) -> None:
        assert kwargs.get("_request_timeout"), "a Lease call without a request timeout"
        self.calls += 1
        self.answering.wait()

    def read_namespaced_lease(self, name: str, namespace: str, **kwargs: Any) -> client.V1Lease:
        self._call(kwargs)
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.lease)

    def _store(self, lease: client.V1Lease) -> client.V1Lease:
        self.version += 1
        stored = copy.deepcopy(lease)
        stored.metadata.resource_version = str(self.version)
        self.lease = stored
        return copy.deepcopy(stored)

    def create_namespaced_lease(self, namespace: str, body: client.V1Lease, **kwargs: Any) -> client.V1Lease:
        self._call(kwargs)
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: client.V1Lease,
                                 **kwargs: Any) -> client.V1Lease:
        self._call(kwargs)
        assert self.lease is not None
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise ApiException(status=409, reason="Conflict")
        return self._store(body)


def elector(api: LeaseAPI, identity: str, clock: Clock, lost: list[str] | None = None,
            wall: datetime.datetime = T0) -> LeaderElector:
    return LeaderElector(None, "ns", "spotrain", identity, TIMING, api=api,
                         monotonic=clock, utcnow=lambda: wall,
                         on_lost=(lost.append if lost is not None else lambda reason: None))


def test_timing_must_let_the_leader_stop_before_the_lease_expires() -> None:
    for lease, deadline, retry in ((15, 15, 2), (15, 20, 2), (15, 10, 10), (15, 10, 0)):
        with pytest.raises(ValueError, match="lease duration"):
            ElectionTiming(lease, deadline, retry)


def test_a_follower_judges_expiry_by_its_own_clock_not_the_holders_renew_time() -> None:
    api, clock = LeaseAPI(), Clock()
    # The holder's wall clock is an hour behind: its renewTime looks long expired to anyone comparing clocks.
    assert elector(api, "a", clock, wall=T0 - datetime.timedelta(hours=1)).try_acquire_or_renew()
    b = elector(api, "b", clock)
    assert not b.try_acquire_or_renew()  # first sight of the Lease: wait a whole lease from now
    clock.t += TIMING.lease_seconds - 1
    assert not b.try_acquire_or_renew()
    clock.t += 1
    assert b.try_acquire_or_renew()  # unchanged for a whole lease by b's clock
    assert api.lease is not None and api.lease.spec.holder_identity == "b"
    assert api.lease.spec.lease_transitions == 1


def test_a_holder_renewing_with_a_clock_ahead_keeps_the_lease_and_one_that_stops_loses_it() -> None:
    api, clock = LeaseAPI(), Clock()
    a = elector(api, "a", clock, wall=T0 + datetime.timedelta(hours=1))
    b = elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    for _ in range(10):  # a renews every retry period: b keeps seeing the Lease change
        clock.t += TIMING.retry_period
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    clock.t += TIMING.lease_seconds  # a stops renewing; its renewTime an hour ahead does not keep b out
    assert b.try_acquire_or_renew()
    assert not a.try_acquire_or_renew()


def test_the_leader_may_act_only_until_its_renew_deadline() -> None:
    api, clock = LeaseAPI(), Clock()
    a = elector(api, "a", clock)
    assert a.try_acquire_or_renew() and a.may_act()
    sent = clock.t
    clock.t = sent + TIMING.renew_deadline - 0.01
    assert a.may_act()
    clock.t = sent + TIMING.renew_deadline
    assert not a.may_act()
    # The renewal is timed from when it was sent, not from when the answer came.
    clock.t = sent = 2000.0
    answer = api._call

    def slow_answer(kwargs: dict[str, Any]) -> None:
        answer(kwargs)
        clock.t = sent + TIMING.renew_deadline

    api._call = slow_answer  # type: ignore[method-assign]
    assert a.try_acquire_or_renew()
    assert not a.may_act()


def test_a_lease_call_that_never_answers_does_not_leave_two_leaders() -> None:
    """A's renewal hangs in a call; its watchdog declares leadership lost at the renew deadline, before B, which
    sees the Lease unchanged, may take it over. Both run on one shared fake clock, in real threads."""
    api, clock = LeaseAPI(), Clock()
    log: list[str] = []
    a = elector(api, "a", clock, lost=log)
    assert a.try_acquire_or_renew()
    b = elector(api, "b", clock)
    assert not b.try_acquire_or_renew()
    observed_at = clock.t
    api.answering.clear()  # from now on no Lease call answers
    a.keep()
    try:
        # Step the shared clock; after each step, see who may act.
        while clock.t < observed_at + TIMING.lease_seconds:
            clock.t += 0.5
            if not a.may_act():
                a._lost.wait(5)  # the watchdog notices within its period of real time
                assert log, "leadership may be lost but on_lost was not called"
            assert not (a.may_act() and clock.t >= observed_at + TIMING.lease_seconds)
        assert log and "no renewal succeeded" in log[0]
        assert not a.may_act()
    finally:
        a._stop.set()
        api.answering.set()
    # Only now, a whole lease after B last saw the Lease change, may B take over.
    assert b.try_acquire_or_renew()


def test_release_hands_the_lease_over_at_once() -> None:
    api, clock = LeaseAPI(), Clock()
    a = elector(api, "a", clock)
    b = elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert api.lease is not None
    assert (api.lease.spec.holder_identity, api.lease.spec.lease_duration_seconds) == ("", 1)
    assert not a.may_act()
    assert b.try_acquire_or_renew()  # no waiting out the lease


def test_release_never_clears_someone_elses_lease() -> None:
    api, clock = LeaseAPI(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.t += TIMING.lease_seconds
    assert b.try_acquire_or_renew()
    a.release()
    assert api.lease is not None and api.lease.spec.holder_identity == "b"


def test_a_lost_compare_and_swap_is_not_leadership() -> None:
    api, clock = LeaseAPI(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    clock.t += TIMING.lease_seconds
    assert not b.try_acquire_or_renew()  # first sight
    clock.t += TIMING.lease_seconds
    original = api.replace_namespaced_lease

    def a_renews_first(name: str, namespace: str, body: client.V1Lease, **kwargs: Any) -> client.V1Lease:
        api.replace_namespaced_lease = original  # type: ignore[method-assign]
        assert a.try_acquire_or_renew()  # a's renewal lands between b's read and b's write
        return original(name, namespace, body, **kwargs)

    api.replace_namespaced_lease = a_renews_first  # type: ignore[method-assign]
    assert not b.try_acquire_or_renew()
    assert api.lease is not None and api.lease.spec.holder_identity == "a"
