"""Which node events wake which jobs: the handlers in controllers/jobs.py, called as kopf calls them."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from spotrain_operator import wellknown as wk
from spotrain_operator.cluster import Cluster
from spotrain_operator.controllers import jobs

JOB_ON_NODE = ("ns", "job-a")  # has a worker on node n1
OTHER_JOB = ("ns", "job-b")


def node_body(*, ready: str = "True", taints: list[dict[str, str]] | None = None,
              heartbeat: str = "2026-11-27T10:00:00Z") -> dict[str, Any]:
    return {"metadata": {"name": "n1", "labels": {wk.ZONE: "us-east-1a"}},
            "spec": {"taints": taints or []},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat}]}}


@pytest.fixture
def runtime() -> jobs.Runtime:
    rt = jobs.Runtime(cast(Cluster, None))
    rt.wakeups = {JOB_ON_NODE: asyncio.Event(), OTHER_JOB: asyncio.Event()}
    return rt


def woken(rt: jobs.Runtime, type_: str, body: dict[str, Any]) -> set[tuple[str, str]]:
    for event in rt.wakeups.values():
        event.clear()
    handler = cast(Callable[..., Coroutine[Any, Any, None]], jobs.node_changed)  # kopf types it as its protocol
    asyncio.run(handler(type=type_, name=body["metadata"]["name"], body=body, memo=rt,
                        jobs_by_node={"n1": [JOB_ON_NODE]}))
    return {key for key, event in rt.wakeups.items() if event.is_set()}


def test_new_capacity_wakes_every_job_and_a_heartbeat_only_the_node_s_own(runtime: jobs.Runtime) -> None:
    body = node_body()
    assert woken(runtime, "ADDED", body) == {JOB_ON_NODE, OTHER_JOB}
    heartbeat = copy.deepcopy(body)
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-11-27T10:10:00Z"
    assert woken(runtime, "MODIFIED", heartbeat) == {JOB_ON_NODE}


def test_a_node_that_becomes_usable_again_wakes_every_job(runtime: jobs.Runtime) -> None:
    woken(runtime, "ADDED", node_body(ready="False"))
    spare = node_body(taints=[{"key": "example.com/spare", "value": "true", "effect": "NoSchedule"}])
    assert woken(runtime, "MODIFIED", spare) == {JOB_ON_NODE, OTHER_JOB}
    assert woken(runtime, "MODIFIED", node_body()) == {JOB_ON_NODE, OTHER_JOB}  # its taint removed


def test_a_notice_or_a_loss_wakes_only_the_jobs_on_the_node(runtime: jobs.Runtime) -> None:
    woken(runtime, "ADDED", node_body())
    notice = node_body(taints=[{"key": wk.KARPENTER_DISRUPTED, "value": "", "effect": "NoSchedule"}])
    assert woken(runtime, "MODIFIED", notice) == {JOB_ON_NODE}
    assert woken(runtime, "DELETED", notice) == {JOB_ON_NODE}
    assert woken(runtime, "ADDED", node_body()) == {JOB_ON_NODE, OTHER_JOB}  # the name is new capacity again
