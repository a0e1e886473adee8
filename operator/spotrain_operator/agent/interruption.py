"""The one shape every interruption source is reduced to, and the time formats the clouds use."""

from __future__ import annotations

import datetime
import email.utils
from dataclasses import dataclass

# Values of the spotrain.dev/interruption taint: the kind of signal that was seen.
AWS_SPOT_ITN = "aws-spot-itn"  # IMDS spot/instance-action or EventBridge "EC2 Spot Instance Interruption Warning"
AWS_REBALANCE = "aws-rebalance"  # rebalance recommendation: an early warning, never a deadline
AWS_SCHEDULED = "aws-scheduled"  # scheduled event (IMDS events/maintenance/scheduled, AWS Health scheduledChange)
AWS_STATE_CHANGE = "aws-state-change"  # EventBridge instance state-change: shutting-down, stopping, ...
GCP_PREEMPTED = "gcp-preempted"
AZURE_PREEMPT = "azure-preempt"

# A stronger signal replaces a weaker one on the Node; equal strength keeps what is there.
STRENGTH: dict[str, int] = {
    AWS_REBALANCE: 1,
    AWS_SCHEDULED: 2,
    AWS_SPOT_ITN: 3,
    GCP_PREEMPTED: 3,
    AZURE_PREEMPT: 3,
    AWS_STATE_CHANGE: 4,  # the instance is already going: stronger than the warning that preceded it
}
KINDS = frozenset(STRENGTH)


@dataclass(frozen=True)
class Interruption:
    """What a source learned: the node will go (or, for a rebalance recommendation, may go)."""

    kind: str  # one of KINDS
    deadline: datetime.datetime | None  # when the node goes (UTC); None where the signal carries none
    event_id: str | None = None  # the cloud's event id (Azure EventId, EventBridge id, scheduled event id)
    detail: str = ""  # free text for logs, e.g. "action=terminate"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown interruption kind {self.kind!r}")
        if self.deadline is not None and self.deadline.tzinfo is None:
            raise ValueError("deadline must be timezone-aware")

    @property
    def strength(self) -> int:
        return STRENGTH[self.kind]


def stronger(a: Interruption | None, b: Interruption | None) -> Interruption | None:
    """The stronger of two interruptions; on a tie the one with the earlier deadline, else ``a``."""
    if a is None:
        return b
    if b is None:
        return a
    if b.strength != a.strength:
        return b if b.strength > a.strength else a
    if b.deadline is not None and (a.deadline is None or b.deadline < a.deadline):
        return b
    return a


class MetadataError(Exception):
    """The metadata service could not be reached, failed, or answered something that is not the format."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def format_rfc3339(t: datetime.datetime) -> str:
    """``2026-01-01T08:22:00Z``: whole seconds, UTC (the format of the deadline annotation)."""
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: object) -> datetime.datetime:
    """RFC 3339 / ISO 8601 with a zone (``Z`` or an offset); raises ValueError otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a timestamp: {value!r}")
    t = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    return t.astimezone(datetime.UTC)


def parse_rfc1123(value: object) -> datetime.datetime:
    """HTTP dates as Azure Scheduled Events and AWS Health write them: ``Mon, 19 Sep 2016 18:29:47 GMT``;
    also ``19 Sep 2016 18:29:47 GMT`` (EC2 scheduled events leave the weekday out). Raises ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a date: {value!r}")
    try:
        t = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError) as e:
        raise ValueError(f"not an RFC 1123 date: {value!r}") from e
    if t is None or t.tzinfo is None:
        raise ValueError(f"date without a time zone: {value!r}")
    return t.astimezone(datetime.UTC)
