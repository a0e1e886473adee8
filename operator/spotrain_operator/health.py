"""Liveness: heartbeats from the parts of the operator that must keep making progress, read by /healthz.

A part calls ``heartbeat(name, max_age)`` each time it completes a round of work; /healthz fails (and the kubelet
restarts the pod) once any part that has beaten is silent for longer than its ``max_age``. The asyncio loop that
kopf runs every handler and daemon in beats through ``watch_event_loop``, so a loop blocked by a stuck call is
seen without any handler's help. A part that has never beaten is not judged: a standby replica has no loop yet.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

EVENT_LOOP = "event-loop"


class Liveness:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic):
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._beats: dict[str, tuple[float, float]] = {}  # name -> (last beat, max age)

    def beat(self, name: str, max_age: float) -> None:
        with self._lock:
            self._beats[name] = (self._monotonic(), max_age)

    def forget(self, name: str) -> None:
        """A part that stopped on purpose (a job daemon whose job was deleted) is no longer judged."""
        with self._lock:
            self._beats.pop(name, None)

    def stale(self) -> dict[str, float]:
        """The parts silent for longer than their max age, with how long they have been silent."""
        now = self._monotonic()
        with self._lock:
            return {name: now - last for name, (last, max_age) in self._beats.items() if now - last > max_age}


LIVENESS = Liveness()


def heartbeat(name: str, max_age: float = 120.0) -> None:
    """Records that ``name`` made progress now (for example at the end of each reconcile pass)."""
    LIVENESS.beat(name, max_age)


async def watch_event_loop(interval: float = 1.0, max_age: float = 30.0, liveness: Liveness = LIVENESS) -> None:
    """Beats for the running asyncio loop while it keeps scheduling callbacks; runs until cancelled."""
    while True:
        liveness.beat(EVENT_LOOP, max_age)
        await asyncio.sleep(interval)
