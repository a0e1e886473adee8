"""Liveness: /healthz fails once a part that beats (the asyncio loop kopf runs everything in, a reconcile loop)
has been silent for longer than it may be, and not before."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request

from spotrain_dev.processes import free_port
from spotrain_operator import health, main


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_part_silent_past_its_max_age_is_stale() -> None:
    clock = Clock()
    liveness = health.Liveness(clock)
    assert liveness.stale() == {}  # nothing has beaten yet: a standby replica is alive
    liveness.beat("reconcile", max_age=30)
    clock.t = 30
    assert liveness.stale() == {}
    clock.t = 31
    assert liveness.stale() == {"reconcile": 31}
    liveness.beat("reconcile", max_age=30)
    assert liveness.stale() == {}
    clock.t = 100
    liveness.forget("reconcile")  # stopped on purpose
    assert liveness.stale() == {}


def test_the_loop_beats_while_it_runs_and_not_while_it_is_blocked() -> None:
    clock = Clock()
    liveness = health.Liveness(clock)

    async def scenario() -> None:
        watcher = asyncio.get_running_loop().create_task(health.watch_event_loop(0, 5, liveness))
        await asyncio.sleep(0)  # the watcher's first turn: it beats
        assert liveness.stale() == {}
        clock.t = 10  # ten seconds pass without the loop running anything (a handler blocking it)
        assert liveness.stale() == {health.EVENT_LOOP: 10}
        await asyncio.sleep(0)  # the loop runs again: the watcher beats
        assert liveness.stale() == {}
        watcher.cancel()

    asyncio.run(scenario())


def test_healthz_fails_while_a_part_is_stuck() -> None:
    port = free_port()
    main._serve_health(port, threading.Event())

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    name = "test-part"
    try:
        assert get("/healthz")[0] == 200
        health.heartbeat(name, max_age=-1)  # silent for longer than it may be at once
        status, text = get("/healthz")
        assert status == 503 and name in text
        assert get("/readyz")[0] == 503  # not ready either: the event was never set
    finally:
        health.LIVENESS.forget(name)
    assert get("/healthz")[0] == 200
