"""When to take the next regular checkpoint.

Young's first-order optimum (refined by Daly) for the time between checkpoints is ``sqrt(2 * C * MTBF)``,
where ``C`` is the cost of one checkpoint and ``MTBF`` the mean time between failures (here: preemptions,
measured by the operator and passed in ``SPOTRAIN_MTBF_SECONDS``).

With asynchronous checkpoints the training time a checkpoint costs is the *stall* (the snapshot); the write
and upload overlap training. ``C`` is therefore the measured stall of asynchronous checkpoints (the full
duration of synchronous ones), smoothed with an exponential moving average. The interval is kept within
``[min, max]`` and never below the time the last checkpoint needed to become durable, so that asynchronous
checkpoints do not queue up behind each other. Until a first checkpoint has been measured the interval is the
lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def young_daly_interval(cost_seconds: float, mtbf_seconds: float) -> float:
    """``sqrt(2 * C * MTBF)``; 0 when either input is not positive."""
    if cost_seconds <= 0 or mtbf_seconds <= 0:
        return 0.0
    return math.sqrt(2.0 * cost_seconds * mtbf_seconds)


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


@dataclass
class IntervalPolicy:
    mode: str = "auto"  # "auto" or "fixed"
    fixed_seconds: float | None = None
    min_seconds: float = 60.0
    max_seconds: float = 3600.0
    mtbf_seconds: float = 3600.0
    smoothing: float = 0.5  # weight of the newest cost measurement
    cost_seconds: float | None = None
    last_durable_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "fixed"):
            raise ValueError(f"interval mode must be auto or fixed, not {self.mode!r}")
        if self.mode == "fixed" and (self.fixed_seconds is None or self.fixed_seconds <= 0):
            raise ValueError("a fixed interval needs fixed_seconds > 0")
        if self.min_seconds > self.max_seconds:
            raise ValueError("min_seconds must not exceed max_seconds")

    def observe(self, cost_seconds: float, durable_seconds: float) -> None:
        """Record one checkpoint: its cost to training (stall, or full duration if synchronous) and the time
        from its start until it was durable."""
        cost = max(0.0, float(cost_seconds))
        if self.cost_seconds is None:
            self.cost_seconds = cost
        else:
            self.cost_seconds = self.smoothing * cost + (1.0 - self.smoothing) * self.cost_seconds
        self.last_durable_seconds = max(0.0, float(durable_seconds))

    def interval_seconds(self) -> float:
        if self.mode == "fixed":
            assert self.fixed_seconds is not None
            return self.fixed_seconds
        if self.cost_seconds is None:
            base = self.min_seconds
        else:
            base = young_daly_interval(self.cost_seconds, self.mtbf_seconds)
        low = max(self.min_seconds, self.last_durable_seconds)
        return clamp(base, low, max(low, self.max_seconds))

    def due(self, seconds_since_last: float) -> bool:
        return seconds_since_last >= self.interval_seconds()
