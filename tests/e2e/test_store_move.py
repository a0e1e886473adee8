"""A notice on the rendezvous store's node, for real: torchrun workers (through the pod runner, on CPU with gloo)
train in a world of two while the store's on-demand node is being disrupted. Every rank takes the coordinated
checkpoint, a new store starts on the other on-demand node, the same two pods re-join it (their agents restart the
worker processes, which save on SIGTERM, and form the next round there), the old store goes, and the job finishes
with every step run exactly once: nothing lost, nothing preempted, no pod replaced.

Deterministic: no timing assertions, only waits for conditions. The workers hold before step ``HOLD_AT`` while a
file exists and no notice is pending, so the notice arrives while both train in one world.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spotrain_dev.podrunner import PodRunner
from spotrain_dev.testing import ZONES, Harness, wait_for
from spotrain_dev.trainer_harness import read_jsonl
from spotrain_operator import wellknown as wk

pytestmark = pytest.mark.cluster

BUCKET = "spotrain-store-move"
STEPS = 30
HOLD_AT = 8


@pytest.mark.timeout(600)
def test_a_notice_on_the_store_node_keeps_the_same_workers_and_loses_no_step(
        harness: Harness, tiny_job: Callable[..., dict[str, Any]], podrunner: PodRunner, tmp_path: Path) -> None:
    spot = [harness.add_node("spot-cpu", zone) for zone in ZONES[:2]]
    stable = [harness.add_node("on-demand", zone) for zone in ZONES[:2]]
    harness.wait_nodes_ready([*spot, *stable])
    hold = tmp_path / "hold"
    hold.touch()
    loss_log = tmp_path / "loss.jsonl"
    manifest = tiny_job(BUCKET, [
        "--steps", str(STEPS), "--step-sleep", "0.25", "--hold-at-step", str(HOLD_AT), "--hold-file", str(hold),
        "--loss-log", str(loss_log)], min_nodes=2, max_nodes=2)
    manifest["spec"]["rendezvous"] = {"pool": "on-demand"}
    harness.start_operator()
    harness.create_job(manifest)

    wait_for("the workers held at step HOLD_AT in a world of 2", lambda: any(
        e.get("event") == "hold" and e["world_size"] == 2 for e in read_jsonl(loss_log)), timeout=300)
    workers = {p.metadata.name: p.metadata.uid for p in harness.running_workers()}
    assert len(workers) == 2
    (old_store,) = harness.pods("rendezvous")
    store_node = old_store.spec.node_name

    # The store's node is being disrupted (Karpenter's taint): the notice also ends the hold.
    harness.nodes.signal(store_node, "karpenter")
    wait_for("the same two pods re-joined the new store (round 2)", lambda: {
        p.metadata.name: p.metadata.uid for p in harness.running_workers()
        if p.metadata.labels[wk.ROUND_LABEL] == "2"} == workers, timeout=240)
    hold.unlink()
    (new_store,) = wait_for("one store left, on the other node", lambda: (
        stores := [p for p in harness.pods("rendezvous") if not p.metadata.deletion_timestamp]) and len(stores) == 1
        and stores[0].spec.node_name != store_node and stores, timeout=120)
    assert new_store.metadata.labels[wk.ROUND_LABEL] == "2"
    wait_for("the old store gone", lambda: harness.gone(old_store.metadata.name), timeout=120)

    status = wait_for("the job finished", lambda: (s := harness.status()).get("phase") in ("Succeeded", "Failed")
                      and s, timeout=400)
    assert status["phase"] == "Succeeded", f"{status}\ncontainer logs: {podrunner.workdir / 'pods'}"
    assert status["preemptions"] == 0 and status["failures"] == 0 and status.get("lostSteps", 0) == 0
    assert {p.metadata.name for p in harness.pods()} == set(workers), "no worker pod was replaced"
    assert harness.events("RendezvousMoved") and not harness.events("RendezvousLost")

    log = read_jsonl(loss_log)
    steps = [e["step"] for e in log if "loss" in e]
    assert sorted(steps) == list(range(STEPS)), f"a step was lost, skipped or run twice: {steps}"
    starts = [e for e in log if e.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["step"] > HOLD_AT and starts[1]["world_size"] == 2, starts
    assert all(e["pod"] in workers for e in starts)
