"""Lease-based leader election (coordination.k8s.io/v1), as controller-runtime does it: replicas wait for the
Lease, the holder renews it, and a holder that cannot renew before it expires exits so that exactly one acts."""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("spotrain.leader")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    def __init__(self, api_client: client.ApiClient, namespace: str, name: str, identity: str,
                 lease_seconds: int = 15, renew_seconds: float = 2.0):
        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds

    def _try(self) -> bool:
        now = _now()
        spec = client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self.lease_seconds,
                                  acquire_time=now, renew_time=now)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace), spec=spec)
            try:
                self.api.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as create_error:
                if create_error.status == 409:
                    return False
                raise
        held = lease.spec.holder_identity
        renewed = lease.spec.renew_time
        duration = datetime.timedelta(seconds=lease.spec.lease_duration_seconds or self.lease_seconds)
        if held and held != self.identity and renewed and renewed + duration > now:
            return False
        if held == self.identity:
            spec.acquire_time = lease.spec.acquire_time
        lease.spec = spec
        try:
            # The resourceVersion in the body makes this a compare-and-swap: two candidates cannot both win.
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    def acquire(self) -> None:
        log.info("waiting for leadership", extra={"lease": f"{self.namespace}/{self.name}"})
        while True:
            try:
                if self._try():
                    log.info("became leader", extra={"identity": self.identity})
                    return
            except ApiException as e:
                log.warning("lease error: %s", e.reason)
            time.sleep(self.renew_seconds)

    def keep(self) -> threading.Thread:
        """Renews in the background; exits the process when leadership is lost."""

        def renew() -> None:
            last_ok = time.monotonic()
            while True:
                time.sleep(self.renew_seconds)
                try:
                    if self._try():
                        last_ok = time.monotonic()
                        continue
                    log.error("leadership taken by another replica; exiting")
                except Exception as e:  # any failure to renew counts against the lease, not just API errors
                    log.warning("lease renewal failed: %s", e)
                    if time.monotonic() - last_ok < self.lease_seconds:
                        continue
                    log.error("could not renew the lease for %s s; exiting", self.lease_seconds)
                os._exit(1)

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread
