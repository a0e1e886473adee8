"""GCP metadata server: ``instance/preempted`` (``TRUE`` once the VM is being preempted, else ``FALSE``).

    GET /computeMetadata/v1/instance/preempted                                  Metadata-Flavor: Google
    GET /computeMetadata/v1/instance/preempted?wait_for_change=true&last_etag=E&timeout_sec=N

The first request reads the current value and its ETag; later ones hang until the value differs from that
ETag or ``timeout_sec`` passes (then the unchanged value comes back). A server that answers at once (no
hanging support) works too: the caller paces its polls.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Callable

from spotrain_operator.agent import http
from spotrain_operator.agent.interruption import GCP_PREEMPTED, Interruption, MetadataError, utcnow

DEFAULT_URL = "http://metadata.google.internal"
PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
FLAVOR_HEADERS = {"Metadata-Flavor": "Google"}
NOTICE = datetime.timedelta(seconds=30)  # GCP gives a preempted VM 30 s


def parse_preempted(status: int, body: bytes) -> bool:
    if status != 200:
        raise MetadataError(f"instance/preempted: HTTP {status}")
    value = body.decode("ascii", errors="replace").strip().upper()
    if value == "TRUE":
        return True
    if value == "FALSE":
        return False
    raise MetadataError(f"instance/preempted: neither TRUE nor FALSE: {body[:80]!r}")


def preempted_url(base_url: str, etag: str | None, wait_seconds: int) -> str:
    url = base_url.rstrip("/") + PREEMPTED_PATH
    if etag is None:
        return url
    query = {"wait_for_change": "true", "last_etag": etag, "timeout_sec": str(wait_seconds)}
    return url + "?" + urllib.parse.urlencode(query)


class GcpMetadataClient:
    """``poll()`` returns a ``gcp-preempted`` Interruption (deadline: first detection + 30 s) or None."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 2.0,
        wait_seconds: int = 60,
        clock: Callable[[], datetime.datetime] = utcnow,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.wait_seconds = wait_seconds
        self._clock = clock
        self._etag: str | None = None
        self._detected: Interruption | None = None

    def poll(self) -> Interruption | None:
        if self._detected is not None:
            # Preemption is final: a later FALSE (a restarted metadata server?) does not undo it.
            return self._detected
        hanging = self._etag is not None
        timeout = self.wait_seconds + 2 * self.timeout + 1 if hanging else self.timeout
        try:
            resp = http.request("GET", preempted_url(self.base_url, self._etag, self.wait_seconds),
                                FLAVOR_HEADERS, None, timeout)
        except MetadataError:
            self._etag = None  # start again with a plain read
            raise
        try:
            preempted = parse_preempted(resp.status, resp.body)
        except MetadataError:
            self._etag = None
            raise
        etag = resp.headers.get("etag")
        # Without an ETag the server cannot hang on a change: keep polling plainly.
        self._etag = etag or None
        if preempted:
            self._detected = Interruption(GCP_PREEMPTED, self._clock() + NOTICE, None, "preempted=TRUE")
        return self._detected
