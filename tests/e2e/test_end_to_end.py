"""The whole path, for real: the operator places a job on the test's KWOK nodes, the pod runner runs its pods as
processes (spotrain-launch -> torchrun -> examples/train_tiny.py on CPU, a standalone c10d store), checkpoints go
to a moto S3 server; a spot interruption notice on one worker's node makes every rank take a coordinated
checkpoint, the doomed worker is evicted only once that checkpoint is durable, the survivors carry on at the
smaller world size and the job Succeeds with the trainer's completion message.

Deterministic: no timing assertions, only waits for conditions. The workers hold before step ``HOLD_AT`` while a
file exists and no notice is pending, so the notice arrives while all three train in one world.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spotrain_dev.demo import commits, object_exists, s3_client, trainer_status
from spotrain_dev.podrunner import PodRunner, RunnerEvent
from spotrain_dev.testing import ZONES, Harness, wait_for
from spotrain_dev.trainer_harness import read_jsonl

pytestmark = pytest.mark.cluster

BUCKET = "spotrain-e2e"
STEPS = 40
HOLD_AT = 12
# The interrupted node runs rank 0: the agent there is the one that coordinates torchrun's next rendezvous round.
DOOMED_RANK = 0


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


@pytest.mark.timeout(600)
def test_spot_interruption_checkpoints_evicts_and_the_survivors_finish(
        harness: Harness, s3_endpoint: str, tiny_job: Callable[..., dict[str, Any]], podrunner: PodRunner,
        tmp_path: Path) -> None:
    spot = [harness.add_node("spot-cpu", zone) for zone in ZONES]
    stable = harness.add_node("on-demand", ZONES[0])
    harness.wait_nodes_ready([*spot, stable])
    s3 = s3_client(s3_endpoint)

    # When the runner learns that the doomed pod is being deleted, and before it sends SIGTERM, look at S3 and at
    # the doomed worker's control endpoint.
    doomed_pod: dict[str, str] = {}
    at_eviction: dict[str, Any] = {}
    evicted = threading.Event()

    def on_event(event: RunnerEvent) -> None:
        if event.kind == "terminating" and event.pod == doomed_pod.get("name") and not evicted.is_set():
            at_eviction["commits"] = commits(s3, BUCKET, "job")
            at_eviction["status"] = trainer_status(doomed_pod["ip"], timeout=5, token=doomed_pod["token"])
            evicted.set()

    podrunner.on_event = on_event

    hold = tmp_path / "hold"
    hold.touch()
    loss_log = tmp_path / "loss.jsonl"
    # No fallback pool, so no spare capacity: the survivors finish at world size 2.
    manifest = tiny_job(BUCKET, ["--steps", str(STEPS), "--step-sleep", "0.25", "--hold-at-step", str(HOLD_AT),
                                 "--hold-file", str(hold), "--loss-log", str(loss_log)], min_nodes=2, max_nodes=3)
    harness.start_operator()
    harness.create_job(manifest)

    # Three workers train and wait at the hold, all in one world of three.
    wait_for("the workers held at step HOLD_AT in a world of 3", lambda: any(
        e.get("event") == "hold" and e["world_size"] == 3 for e in read_jsonl(loss_log)), timeout=300)
    workers = harness.running_workers()
    assert len(workers) == 3

    token = harness.control_token()

    def ranks_now() -> dict[str, int] | None:
        ranks = {w.metadata.name: (trainer_status(w.status.pod_ip, timeout=5, token=token) or {}).get("rank")
                 for w in workers}
        return None if None in ranks.values() else {k: int(v) for k, v in ranks.items() if v is not None}

    ranks = wait_for("every worker's rank at its control endpoint", ranks_now, timeout=60)
    assert sorted(ranks.values()) == [0, 1, 2], ranks
    doomed = next(w for w in workers if ranks[w.metadata.name] == DOOMED_RANK)
    doomed_pod.update(name=doomed.metadata.name, ip=doomed.status.pod_ip, token=token or "")
    survivors = [w.metadata.name for w in workers if w.metadata.name != doomed.metadata.name]

    # The notice ends the hold: every rank takes the coordinated checkpoint at the next step boundary.
    harness.nodes.signal(doomed.spec.node_name, "nth-spot-itn", lead_seconds=120)
    wait_for("the doomed worker evicted", evicted.is_set, timeout=120)
    hold.unlink()

    # It went only once the coordinated checkpoint was committed in S3.
    handled = (at_eviction["status"] or {}).get("handled_request_id")
    assert handled, f"the doomed worker had handled no checkpoint request when it was evicted: {at_eviction}"
    notice = [m for m in at_eviction["commits"] if m.get("request_id") == handled]
    assert notice, f"no committed checkpoint for request {handled} in S3 when the doomed pod was deleted: " \
        f"{[m['key'] for m in at_eviction['commits']]}"
    (marker,) = notice
    assert str(marker["reason"]).startswith("notice")
    assert marker["world_size"] == 3 and marker["step"] >= HOLD_AT
    assert not any(w.metadata.name == doomed.metadata.name for w in harness.running_workers())

    status = wait_for("the preemption recorded", lambda: (s := harness.status()).get("preemptions") == 1 and s)
    assert status["preemptionsByPool"] == {f"spot-cpu/{harness.node_zone(doomed.spec.node_name)}": 1}
    assert harness.events("InterruptionNotice") and harness.events("WorkerPreempted")

    # The survivors resume from that checkpoint at world size 2 and finish the job.
    status = wait_for("the job Succeeded", lambda: (s := harness.status()).get("phase") in ("Succeeded", "Failed")
                      and s, timeout=400)
    assert status["phase"] == "Succeeded", f"{status}\ncontainer logs: {podrunner.workdir / 'pods'}"
    assert status["preemptions"] == 1 and status["failures"] == 0
    assert _condition(status, "Succeeded")["reason"] == "TrainerCompleted"
    assert status["lastCheckpoint"]["step"] == STEPS, "the final checkpoint is in the job's status"

    log = read_jsonl(loss_log)
    starts = [e for e in log if e.get("event") == "start"]
    resumed = [e for e in starts if e["world_size"] == 2 and e["step"] >= marker["step"]]
    assert resumed, f"no restart at world size 2 from the notice checkpoint (step {marker['step']}): {starts}"
    assert {e["pod"] for e in resumed} <= set(survivors)
    steps = [e for e in log if "loss" in e]
    assert sorted({e["step"] for e in steps}) == list(range(STEPS)), "a step was lost or skipped"
    assert steps[-1]["step"] == STEPS - 1 and steps[-1]["world_size"] == 2
    assert any(e.get("event") == "done" and e["step"] == STEPS and e["world_size"] == 2 for e in log)

    # Completion: the trainer's termination message is in the finished pods' status, and in S3.
    finished = [p for p in harness.pods() if p.metadata.name in survivors and p.status.phase == "Succeeded"]
    assert finished, "no survivor reported Succeeded"
    for pod in finished:
        terminated = pod.status.container_statuses[0].state.terminated
        assert terminated.exit_code == 0
        message = json.loads(terminated.message)
        assert (message["spotrain"], message["step"]) == ("completed", STEPS)
    assert object_exists(s3, BUCKET, "job/COMPLETED")

    # Nothing is left running: no container, no process of any of the test's pods (the store included).
    wait_for("every container of the job stopped", lambda: not podrunner.running(), timeout=120)
    wait_for("no process of the job left", lambda: not podrunner.leftover_pids(), timeout=30)
    assert not [p for p in harness.pods("rendezvous") if p.status.phase == "Running"
                and not p.metadata.deletion_timestamp]
