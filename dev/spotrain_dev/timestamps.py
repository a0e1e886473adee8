"""The dev tools' one RFC 3339 formatter: whole seconds in UTC with a "Z", as Kubernetes writes times
(metav1.Time marshals with time.RFC3339 in UTC)."""

from __future__ import annotations

import datetime


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(t: datetime.datetime) -> str:
    """``t`` (timezone-aware) as ``2026-01-02T03:04:05Z``."""
    if t.tzinfo is None:
        raise ValueError(f"{t!r} has no time zone: pass an aware datetime (datetime.UTC)")
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
