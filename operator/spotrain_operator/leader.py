"""Lease-based leader election (coordination.k8s.io/v1) with client-go's guarantees, so that two replicas
never act at once:

- every Lease call has a request timeout, so no call can hang the election;
- expiry is judged by locally observed time, as client-go's leaderelection does: a follower records, on its
  own monotonic clock, when it last saw the Lease change (holder or resourceVersion) and takes over only when
  it has seen no change for ``leaseDurationSeconds``; the holder's ``renewTime`` (another machine's wall clock)
  is never compared with ours;
- the holder stops acting once its last successful renewal, timed from *before* the request was sent, is
  ``renew_deadline`` old, and ``renew_deadline`` is shorter than the lease: it is gone before any follower can
  have seen the lease expire. A watchdog thread checks this, so a renewal stuck in a call cannot delay it;
- on shutdown the holder releases the Lease (holder cleared, ``leaseDurationSeconds: 1``, as client-go's
  ``ReleaseOnCancel``), so a rolling upgrade does not leave the cluster leaderless for a whole lease.

Why not ``kubernetes.leaderelection`` from the Python client: its LeaseLock builds its API from the global default
configuration (not the client the operator loaded), makes every call without a timeout (a hung renewal blocks
its loop past the lease while another replica takes over), compares ``time.time()`` readings (a wall-clock step
moves expiry), has no watchdog that stops the leader while a call hangs, and cannot release the Lease.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("spotrain.leader")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _exit_process(reason: str) -> None:
    log.error("leadership may be lost (%s): exiting so that no action is sent without it", reason)
    logging.shutdown()
    os._exit(1)


@dataclass(frozen=True)
class ElectionTiming:
    """client-go's three durations (LeaseDuration, RenewDeadline, RetryPeriod), in seconds."""

    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_seconds > self.renew_deadline > self.retry_period > 0:
            raise ValueError(f"leader election needs lease duration ({self.lease_seconds} s) > renew deadline "
                             f"({self.renew_deadline} s) > retry period ({self.retry_period} s) > 0")
        if self.lease_seconds != int(self.lease_seconds):
            raise ValueError(f"the lease duration is whole seconds in the Lease, not {self.lease_seconds}")

    @property
    def request_timeout(self) -> float:
        """Per API call: one attempt (a read and a write) fits in the renew deadline."""
        return self.renew_deadline / 2

    @property
    def watchdog_period(self) -> float:
        return min(0.5, (self.lease_seconds - self.renew_deadline) / 4)


class LeaderElector:
    """``acquire()`` blocks until this replica holds the Lease; ``keep()`` renews it in the background and calls
    ``on_lost`` (by default: exit the process) once leadership may be lost; ``release()`` gives it up."""

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str, identity: str,
                 timing: ElectionTiming | None = None, *,
                 on_lost: Callable[[str], None] = _exit_process,
                 monotonic: Callable[[], float] = time.monotonic,
                 utcnow: Callable[[], datetime.datetime] = _utcnow,
                 api: client.CoordinationV1Api | None = None):
        self.api = api or client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.timing = timing or ElectionTiming()
        self.on_lost = on_lost
        self._monotonic, self._utcnow = monotonic, utcnow
        self._observed: tuple[str, str] | None = None  # (holder, resourceVersion) last seen
        self._observed_at = 0.0  # our monotonic time when _observed last changed
        self._renewed_at: float | None = None  # monotonic time at which our last successful write was sent
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- one attempt ---------------------------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One attempt to take or renew the Lease; True when this replica holds it now. Raises on API errors
        other than a lost compare-and-swap (409) and an absent Lease (404)."""
        sent_at = self._monotonic()
        timeout = self.timing.request_timeout
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as e:
            if e.status != 404:
                raise
            return self._create(sent_at, timeout)
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        observed = (holder, lease.metadata.resource_version or "")
        if observed != self._observed:
            self._observed, self._observed_at = observed, self._monotonic()
        lease_seconds = spec.lease_duration_seconds or self.timing.lease_seconds
        if holder and holder != self.identity and self._monotonic() < self._observed_at + lease_seconds:
            return False  # held, and not seen unchanged for a whole lease by our own clock
        if holder and holder != self.identity:
            log.info("lease of %s expired by our clock; taking over", holder)
        now = self._utcnow()
        ours = holder == self.identity
        lease.spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self.timing.lease_seconds),
            acquire_time=spec.acquire_time if ours and spec.acquire_time else now,
            renew_time=now,
            lease_transitions=(spec.lease_transitions or 0) + (0 if ours else 1),
        )
        try:
            # The resourceVersion in the body makes this a compare-and-swap: two candidates cannot both win.
            written = self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        self._won(written, sent_at)
        return True

    def _create(self, sent_at: float, timeout: float) -> bool:
        now = self._utcnow()
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(holder_identity=self.identity, acquire_time=now, renew_time=now,
                                    lease_duration_seconds=int(self.timing.lease_seconds), lease_transitions=0))
        try:
            written = self.api.create_namespaced_lease(self.namespace, body, _request_timeout=timeout)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        self._won(written, sent_at)
        return True

    def _won(self, written: client.V1Lease, sent_at: float) -> None:
        self._observed = (self.identity, written.metadata.resource_version or "")
        self._observed_at = self._monotonic()
        self._renewed_at = sent_at

    # -- leadership over time ------------------------------------------------------------------------------

    def may_act(self) -> bool:
        """Whether this replica holds the Lease with certainty now: its last renewal was sent less than the
        renew deadline ago (shorter than the lease any follower waits out)."""
        return (not self._lost.is_set() and self._renewed_at is not None
                and self._monotonic() - self._renewed_at < self.timing.renew_deadline)

    def acquire(self) -> None:
        log.info("waiting for leadership", extra={"lease": f"{self.namespace}/{self.name}"})
        while not self._stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    log.info("became leader", extra={"identity": self.identity})
                    return
            except Exception as e:  # the apiserver unreachable or slow: keep waiting
                log.warning("lease error: %s", _short(e))
            self._stop.wait(self.timing.retry_period * random.uniform(1.0, 1.2))  # jitter, as client-go's

    def keep(self) -> None:
        """Renews in the background; calls ``on_lost`` once leadership may be lost: the Lease was taken, or no
        renewal succeeded for the renew deadline (whether the calls fail or hang)."""
        for target, name in ((self._renew_loop, "lease-renewal"), (self._watchdog, "lease-watchdog")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.timing.retry_period):
            try:
                if self.try_acquire_or_renew():
                    continue
                if self._observed and self._observed[0] not in ("", self.identity):
                    self._lose(f"the lease was taken by {self._observed[0]}")
                    return
            except Exception as e:  # counts against the renew deadline, which the watchdog enforces
                log.warning("lease renewal failed: %s", _short(e))

    def _watchdog(self) -> None:
        while not self._stop.wait(self.timing.watchdog_period):
            if not self.may_act():
                self._lose(f"no renewal succeeded for {self.timing.renew_deadline} s")
                return

    def _lose(self, reason: str) -> None:
        if self._stop.is_set() or self._lost.is_set():
            return
        self._lost.set()
        self._stop.set()
        self.on_lost(reason)

    def release(self) -> None:
        """Stops renewing and, if this replica still holds the Lease, hands it over at once: holder cleared and
        a one-second lease (client-go's ReleaseOnCancel). Call it only after the operator has stopped acting."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timing.request_timeout * 2)
        if self._renewed_at is None or self._lost.is_set():
            return
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace,
                                                   _request_timeout=self.timing.request_timeout)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            now = self._utcnow()
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.acquire_time = now
            lease.spec.renew_time = now
            self.api.replace_namespaced_lease(self.name, self.namespace, lease,
                                              _request_timeout=self.timing.request_timeout)
            self._renewed_at = None
            log.info("released the lease", extra={"lease": f"{self.namespace}/{self.name}"})
        except Exception as e:  # then the others wait out the lease
            log.warning("could not release the lease: %s", _short(e))


def _short(e: BaseException) -> str:
    status = getattr(e, "status", None)
    if status is not None:
        return f"{type(e).__name__}: {status} {getattr(e, 'reason', '')}"[:300]
    return f"{type(e).__name__}: {e}"[:300]
