"""AWS EC2 instance metadata (IMDSv2, with IMDSv1 fallback): spot instance-action, rebalance recommendation
and, optionally, scheduled maintenance events.

    PUT /latest/api/token                                  X-aws-ec2-metadata-token-ttl-seconds: 21600
    GET /latest/meta-data/spot/instance-action             {"action": "terminate", "time": "...Z"} or 404
    GET /latest/meta-data/events/recommendations/rebalance {"noticeTime": "...Z"} or 404
    GET /latest/meta-data/events/maintenance/scheduled     [{"Code", "State", "EventId", "NotBefore", ...}]
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from spotrain_operator.agent import http
from spotrain_operator.agent.interruption import (
    AWS_REBALANCE,
    AWS_SCHEDULED,
    AWS_SPOT_ITN,
    Interruption,
    MetadataError,
    parse_rfc1123,
    parse_rfc3339,
    stronger,
)

DEFAULT_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
SCHEDULED_PATH = "/latest/meta-data/events/maintenance/scheduled"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL = 21600
TOKEN_REFRESH_MARGIN = 120.0  # seconds before expiry at which a new token is fetched
V1_RETRY_AFTER = 300.0  # after IMDSv2 was refused, try it again this often

SPOT_ACTIONS = ("terminate", "stop", "hibernate")
# Scheduled events that take the instance (or its host) away; "completed" and "canceled" ones are history.
SCHEDULED_CODES = ("instance-reboot", "system-reboot", "system-maintenance", "instance-retirement", "instance-stop")


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise MetadataError(f"{what}: not JSON: {body[:80]!r}") from e


def parse_instance_action(status: int, body: bytes) -> Interruption | None:
    """The spot instance-action document; None for 404 (nothing pending)."""
    if status == 404:
        return None
    if status != 200:
        raise MetadataError(f"spot/instance-action: HTTP {status}")
    doc = _json(body, "spot/instance-action")
    if not isinstance(doc, dict):
        raise MetadataError(f"spot/instance-action: not an object: {body[:80]!r}")
    action = doc.get("action")
    if action not in SPOT_ACTIONS:
        raise MetadataError(f"spot/instance-action: unknown action {action!r}")
    try:
        deadline = parse_rfc3339(doc.get("time"))
    except ValueError as e:
        raise MetadataError(f"spot/instance-action: bad time: {e}") from e
    return Interruption(AWS_SPOT_ITN, deadline, None, f"action={action}")


def parse_rebalance(status: int, body: bytes) -> Interruption | None:
    """The rebalance recommendation; None for 404. A recommendation has no deadline."""
    if status == 404:
        return None
    if status != 200:
        raise MetadataError(f"events/recommendations/rebalance: HTTP {status}")
    doc = _json(body, "events/recommendations/rebalance")
    if not isinstance(doc, dict):
        raise MetadataError(f"events/recommendations/rebalance: not an object: {body[:80]!r}")
    try:
        notice = parse_rfc3339(doc.get("noticeTime"))
    except ValueError as e:
        raise MetadataError(f"events/recommendations/rebalance: bad noticeTime: {e}") from e
    return Interruption(AWS_REBALANCE, None, None, f"noticeTime={notice:%Y-%m-%dT%H:%M:%SZ}")


def parse_scheduled_events(status: int, body: bytes) -> Interruption | None:
    """The earliest active scheduled event; None for 404, an empty list or only completed/canceled events."""
    if status == 404:
        return None
    if status != 200:
        raise MetadataError(f"events/maintenance/scheduled: HTTP {status}")
    doc = _json(body, "events/maintenance/scheduled")
    if not isinstance(doc, list):
        raise MetadataError(f"events/maintenance/scheduled: not a list: {body[:80]!r}")
    best: Interruption | None = None
    for event in doc:
        if not isinstance(event, dict):
            raise MetadataError(f"events/maintenance/scheduled: not an object: {event!r}")
        if event.get("State") != "active" or event.get("Code") not in SCHEDULED_CODES:
            continue
        try:
            not_before = parse_rfc1123(event.get("NotBefore"))
        except ValueError as e:
            raise MetadataError(f"events/maintenance/scheduled: bad NotBefore: {e}") from e
        event_id = event.get("EventId") if isinstance(event.get("EventId"), str) else None
        candidate = Interruption(AWS_SCHEDULED, not_before, event_id, f"code={event.get('Code')}")
        best = stronger(best, candidate)
    return best


class ImdsClient:
    """Polls IMDS; ``poll()`` returns the strongest pending interruption or None, or raises MetadataError."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 2.0,
        scheduled_events: bool = False,
        token_ttl: int = TOKEN_TTL,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.scheduled_events = scheduled_events
        self.token_ttl = token_ttl
        self._monotonic = monotonic
        self._token: str | None = None
        self._token_expires = 0.0
        self._v1_until = 0.0  # IMDSv2 was refused: use IMDSv1 until then

    @property
    def uses_v1(self) -> bool:
        return self._token is None and self._monotonic() < self._v1_until

    def _refresh_token(self) -> None:
        now = self._monotonic()
        resp = http.request("PUT", self.base_url + TOKEN_PATH, {TOKEN_TTL_HEADER: str(self.token_ttl)},
                            b"", self.timeout)
        if resp.status == 200:
            token = resp.text.strip()
            if not token or not token.isprintable() or len(token) > 4096:
                raise MetadataError(f"api/token: not a token: {resp.body[:80]!r}")
            ttl = float(self.token_ttl)
            with contextlib.suppress(ValueError):
                ttl = float(resp.headers.get(TOKEN_TTL_HEADER.lower()) or ttl)
            self._token = token
            self._token_expires = now + ttl
            self._v1_until = 0.0
        elif resp.status in (403, 404, 405):
            # IMDSv2 disabled or not offered (an old endpoint): fall back to IMDSv1 for a while.
            self._token = None
            self._v1_until = now + V1_RETRY_AFTER
        else:
            raise MetadataError(f"api/token: HTTP {resp.status}")

    def _headers(self) -> dict[str, str]:
        if self._token is None and self._monotonic() < self._v1_until:
            return {}
        if self._token is None or self._monotonic() >= self._token_expires - min(
            TOKEN_REFRESH_MARGIN, self.token_ttl / 2
        ):
            self._refresh_token()
        return {TOKEN_HEADER: self._token} if self._token else {}

    def get(self, path: str) -> http.Response:
        resp = http.request("GET", self.base_url + path, self._headers(), None, self.timeout)
        if resp.status == 401:
            # The token expired or was never accepted (IMDSv2 required after a v1 fallback): one new token.
            self._token = None
            self._v1_until = 0.0
            resp = http.request("GET", self.base_url + path, self._headers(), None, self.timeout)
        return resp

    def poll(self) -> Interruption | None:
        checks: list[tuple[str, Callable[[int, bytes], Interruption | None]]] = [
            (INSTANCE_ACTION_PATH, parse_instance_action),
            (REBALANCE_PATH, parse_rebalance),
        ]
        if self.scheduled_events:
            checks.append((SCHEDULED_PATH, parse_scheduled_events))
        found: Interruption | None = None
        error: MetadataError | None = None
        for path, parse in checks:
            try:
                resp = self.get(path)
                found = stronger(found, parse(resp.status, resp.body))
            except MetadataError as e:
                error = error or e
        # A notice that was read is acted on even when another path failed; otherwise the failure is reported.
        if found is None and error is not None:
            raise error
        return found
