"""The short fault soak (the long one is in make bench): a job through notices, joins and losses while its operator
is SIGKILLed at random moments and the API server restarts once mid-drain; then no duplicate or orphan pod, no
preemption decided twice, every notice drained before its deadline."""

from __future__ import annotations

from spotrain_dev.soak import run_soak
from spotrain_dev.testing import Harness


def test_operator_kills_and_an_apiserver_restart_lose_nothing(harness: Harness) -> None:
    report = run_soak(harness, kills=6, seed=14)
    assert report.kills == 6 and report.apiserver_restarts == 1 and report.notices >= 1
    assert report.clean, report
