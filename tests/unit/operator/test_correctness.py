"""Decisions on what real clusters send: reused node names, refused actions, late notices, graceful shutdown,
operator-removed pods, crash logs, bad specs and moving rendezvous stores. Each case failed on the core before
the status became one typed value and drains were read back from the cluster."""

from __future__ import annotations

import copy
import datetime
from dataclasses import replace
from typing import Any

import pytest

from spotrain_dev.corekit import JOB, NOW, QUICKSTART, base_nodes, created, node, observe, spec, store, worker
from spotrain_operator import wellknown as wk
from spotrain_operator.api import SpecError, parse_spec
from spotrain_operator.core import actions as act
from spotrain_operator.core.model import JobStatus, NodeView, PodView, Taint, parse_time
from spotrain_operator.core.reconcile import Decision, decide
from spotrain_protocol import TrainerStatus

KARPENTER = (Taint(wk.KARPENTER_DISRUPTED, "", "NoSchedule"),)
SECOND = datetime.timedelta(seconds=1)


def three_workers() -> list[PodView]:
    return [store(), *(worker(f"w{i}", "spot-cpu", z, f"s-{z}", serial=i, ip=f"127.16.{i}.1")
                       for i, z in enumerate("abc"))]


def with_uid(view: NodeView, uid: str) -> NodeView:
    return replace(view, uid=uid)


def of(decision: Decision, kind: type) -> list[Any]:
    return [a for a in decision.actions if isinstance(a, kind)]


def events(decision: Decision, reason: str) -> list[act.Event]:
    return [a for a in of(decision, act.Event) if a.reason == reason]


# -- the status is one value, written whole -----------------------------------------------------------------

def test_status_round_trips_and_removals_are_real() -> None:
    s = spec(elastic__maxNodes=3)
    nodes = [with_uid(node("s-a", "spot-cpu", "a", taints=KARPENTER), "uid-1"), *base_nodes()[1:]]
    first = decide(observe(s, three_workers(), nodes))
    status = JobStatus.from_body(first.status)
    assert status.to_body() == first.status, "from_body and to_body round-trip"
    assert status.drains["s-a"].node_uid == "uid-1"
    # Once the doomed worker is gone the drain is over: the key is absent from the status written, so replacing
    # the stored status removes it (a merge patch would have kept it forever).
    gone = decide(observe(s, [p for p in three_workers() if p.name != "w0"], nodes, status, NOW + SECOND))
    assert "s-a" not in gone.status["drains"]


def test_expired_cooldowns_leave_the_status() -> None:
    status = JobStatus(round=1, serial=10, cooldowns={"spot-cpu/a": NOW - SECOND, "spot-cpu/b": NOW + SECOND})
    d = decide(observe(spec(elastic__maxNodes=3), three_workers(), base_nodes(), status))
    assert set(d.status["cooldowns"]) == {"spot-cpu/b"}


# -- a reused node name is a new node -------------------------------------------------------------------------

def test_a_stale_drain_neither_hides_a_new_notice_nor_turns_a_crash_into_a_preemption() -> None:
    s = spec(elastic__maxNodes=3)
    old_drain = JobStatus.from_body({"rendezvous": {"round": 1}, "podSerial": 10, "drains": {"s-a": {
        "nodeUID": "old", "source": "karpenter", "deadline": "2026-01-01T07:50:00Z", "requestID": "old-request",
        "requestedAt": "2026-01-01T07:48:00Z"}}})
    pods = three_workers()
    # A new node reusing the name s-a got a notice: it is drained under a new request.
    fresh = [with_uid(node("s-a", "spot-cpu", "a", taints=KARPENTER), "new"), *base_nodes()[1:]]
    d = decide(observe(s, pods, fresh, old_drain))
    (request,) = of(d, act.RequestCheckpoint)
    assert request.request_id != "old-request" and d.status["drains"]["s-a"]["nodeUID"] == "new"
    # A crash of the worker on the new node, without any notice, is a failure, not a preemption.
    healthy = [with_uid(node("s-a", "spot-cpu", "a"), "new"), *base_nodes()[1:]]
    crashed = [pods[0], replace(pods[1], phase="Failed", ready=False, exit_code=1), *pods[2:]]
    d = decide(observe(s, crashed, healthy, old_drain))
    assert d.status["failures"] == 1 and d.status["preemptions"] == 0
    assert "s-a" not in d.status["drains"]


# -- record what the API accepted: refused actions are sent again -----------------------------------------------

def test_an_eviction_the_api_refused_is_sent_again() -> None:
    s = spec(elastic__maxNodes=3)
    nodes = [node("s-a", "spot-cpu", "a", taints=KARPENTER), *base_nodes()[1:]]
    first = decide(observe(s, three_workers(), nodes))
    (request,) = of(first, act.RequestCheckpoint)
    durable = {"w0": TrainerStatus(step=7, checkpoint_step=7, checkpoint_request_id=request.request_id)}
    evicting = decide(observe(s, three_workers(), nodes, JobStatus.from_body(first.status), NOW + SECOND, durable))
    assert [e.name for e in of(evicting, act.EvictPod)] == ["w0"]
    # The eviction failed (a 500 from two PodDisruptionBudgets, a timeout, the operator killed): the pod is still
    # running, not terminating, so the next pass evicts it again; the preemption is still counted once.
    again = decide(observe(s, three_workers(), nodes, JobStatus.from_body(evicting.status), NOW + 2 * SECOND, durable))
    assert [e.name for e in of(again, act.EvictPod)] == ["w0"]
    assert again.status["preemptions"] == 1


def test_a_checkpoint_request_a_worker_missed_is_sent_again_until_it_holds_it() -> None:
    s = spec(elastic__maxNodes=3)
    nodes = [node("s-a", "spot-cpu", "a", taints=KARPENTER), *base_nodes()[1:]]
    first = decide(observe(s, three_workers(), nodes))
    (request,) = of(first, act.RequestCheckpoint)
    status = JobStatus.from_body(first.status)
    holds = TrainerStatus(step=3, pending_request_id=request.request_id)
    missed = TrainerStatus(step=3)
    d = decide(observe(s, three_workers(), nodes, status, NOW + SECOND, {"w0": holds, "w1": missed, "w2": holds}))
    (retry,) = of(d, act.RequestCheckpoint)
    assert retry.request_id == request.request_id and [name for name, _ in retry.pod_ips] == ["w1"]
    d = decide(observe(s, three_workers(), nodes, status, NOW + 2 * SECOND, {"w0": holds, "w1": holds, "w2": holds}))
    assert not of(d, act.RequestCheckpoint)


# -- deadlines and grace ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seen_after", [25, 30, 90])
def test_a_late_notice_still_gets_a_checkpoint_and_a_graceful_stop(seen_after: int) -> None:
    """A 30 s notice seen 25 s late (inside the margin), at its deadline, or long after it."""
    s = spec(elastic__maxNodes=3)
    issued = NOW - datetime.timedelta(seconds=seen_after)
    deadline = issued + datetime.timedelta(seconds=30)
    agent = node("s-a", "spot-cpu", "a", taints=(Taint(wk.AGENT_INTERRUPTION_TAINT, "gcp-preempted", "NoSchedule"),),
                 annotations={wk.AGENT_DEADLINE_ANNOTATION: deadline.strftime("%Y-%m-%dT%H:%M:%SZ")})
    d = decide(observe(s, three_workers(), [agent, *base_nodes()[1:]]))
    assert len(of(d, act.RequestCheckpoint)) == 1
    (eviction,) = of(d, act.EvictPod)
    assert eviction.name == "w0"
    assert eviction.grace_seconds >= s.termination.safety_margin_seconds, "the margin is given to the pod"


def test_grace_is_the_time_left_when_the_checkpoint_is_durable_early() -> None:
    s = spec(elastic__maxNodes=3)
    nodes = [node("s-a", "spot-cpu", "a", taints=KARPENTER), *base_nodes()[1:]]
    first = decide(observe(s, three_workers(), nodes))
    (request,) = of(first, act.RequestCheckpoint)
    durable = {"w0": TrainerStatus(step=7, checkpoint_step=7, checkpoint_request_id=request.request_id)}
    d = decide(observe(s, three_workers(), nodes, JobStatus.from_body(first.status), NOW + 5 * SECOND, durable))
    (eviction,) = of(d, act.EvictPod)
    assert eviction.grace_seconds == 115  # Karpenter's 2 minutes, 5 s in


# -- graceful node shutdown ---------------------------------------------------------------------------------------

def test_a_node_shutting_down_gracefully_checkpoints_instead_of_being_killed() -> None:
    s = spec(elastic__maxNodes=3)
    shutting = NodeView("s-a", {"karpenter.sh/nodepool": "spot-cpu", wk.ZONE: "a"}, {}, (), False, "False",
                        "KubeletNotReady", "node is shutting down")
    d = decide(observe(s, three_workers(), [shutting, *base_nodes()[1:]]))
    assert not [a for a in of(d, act.DeletePod) if a.name == "w0" and a.grace_seconds == 0]
    assert len(of(d, act.RequestCheckpoint)) == 1 and "s-a" in d.status["drains"]
    # A node that stopped heartbeating (vanished) cannot checkpoint: its worker goes at once.
    vanished = replace(shutting, ready_status="Unknown", ready_reason="NodeStatusUnknown",
                       ready_message="Kubelet stopped posting node status.")
    d = decide(observe(s, three_workers(), [vanished, *base_nodes()[1:]]))
    assert act.DeletePod("w0", "node not ready", 0) in d.actions


# -- pods the operator removed are neither failures nor preemptions ---------------------------------------------

def test_a_worker_the_operator_removed_is_not_a_failure() -> None:
    s = spec(elastic__maxNodes=3)
    pods = three_workers()
    exited = replace(pods[3], phase="Failed", ready=False, exit_code=75, deleting=True, deletion_reason="scale down")
    d = decide(observe(s, [*pods[:3], exited], base_nodes()))
    assert d.status["failures"] == 0 and d.status["preemptions"] == 0


def test_scale_down_records_its_reason_and_accounts_the_pod() -> None:
    s = spec(elastic__maxNodes=2, elastic__targetNodes=2)
    d = decide(observe(s, three_workers(), base_nodes()))
    (removed,) = [a for a in of(d, act.DeletePod) if a.name.startswith("w")]
    assert removed.reason and removed.name in d.status["accountedPods"]


# -- success only on the trainer's completion record --------------------------------------------------------------

def test_a_crash_log_mentioning_completed_is_not_success() -> None:
    s = spec(elastic__maxNodes=3)
    pods = three_workers()
    crash = 'Traceback: RuntimeError: "completed" is not a valid phase'
    crashed = replace(pods[1], phase="Failed", ready=False, exit_code=1, termination_message=crash)
    d = decide(observe(s, [pods[0], crashed, *pods[2:]], base_nodes()))
    assert d.status["phase"] != "Succeeded" and d.status["failures"] == 1
    record = '{"spotrain": "completed", "step": 500, "checkpoint": {"step": 500, "uri": "s3://b/p/500"}}'
    done = replace(pods[1], phase="Succeeded", ready=False, exit_code=0, termination_message=record)
    d = decide(observe(s, [pods[0], done, *pods[2:]], base_nodes()))
    assert d.status["phase"] == "Succeeded" and d.status["lastCheckpoint"]["step"] == 500


# -- bad input never wedges a job ---------------------------------------------------------------------------------

def raw_spec(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(QUICKSTART["spec"])
    raw.update(changes)
    return raw


@pytest.mark.parametrize(("path", "value"), [
    (("placement", "cooldown"), "100000000h"),
    (("elastic", "scaleUpWindow"), "99999999999h"),
    (("fallback", "after"), "876000h"),
])
def test_huge_durations_are_refused_naming_the_field(path: tuple[str, str], value: str) -> None:
    raw = raw_spec()
    raw[path[0]][path[1]] = value
    with pytest.raises(SpecError, match=rf"spec\.{path[0]}\.{path[1]}: .* longer than a year"):
        parse_spec(raw)


@pytest.mark.parametrize("price", ["nan", "inf", "-1"])
def test_prices_that_are_not_finite_are_refused(price: str) -> None:
    raw = raw_spec()
    del raw["placement"]["pools"][0]["hourlyPrice"]
    with pytest.raises(SpecError, match=r"spec\.placement\.pools\[0\]\.hourlyPrice"):
        parse_spec(raw, {"spot-cpu.hourlyPrice": price})


def test_a_huge_ttl_does_not_overflow() -> None:
    s = parse_spec(raw_spec(ttlSecondsAfterFinished=10**12))
    status = JobStatus(phase="Succeeded", round=1, completion_time=NOW)
    d = decide(observe(s, [], base_nodes(), status, NOW + datetime.timedelta(days=3650)))
    assert not of(d, act.DeleteJob) and "ReconcileError" not in {c["type"] for c in d.status["conditions"]}


def test_times_without_a_zone_or_out_of_range_do_not_raise() -> None:
    assert parse_time("2026-01-01T08:00:00") == NOW
    assert parse_time("9999-12-31T23:59:59Z") is None
    assert parse_time("soon") is None
    assert JobStatus.from_body({"cooldowns": {"p/z": "garbage"}, "podSerial": "x", "pendingSince": 5}).serial == 0


def test_a_failing_step_is_reported_once_and_does_not_stop_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    from spotrain_operator.core import reconcile

    def broken(*_: Any, **__: Any) -> None:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(reconcile._Reconcile, "scale", broken)
    s = spec(elastic__maxNodes=3)
    nodes = [node("s-a", "spot-cpu", "a", taints=KARPENTER), *base_nodes()[1:]]
    first = decide(observe(s, three_workers(), nodes))
    assert len(of(first, act.RequestCheckpoint)) == 1, "the drain ran although scaling raised"
    (condition,) = [c for c in first.status["conditions"] if c["type"] == "ReconcileError"]
    assert condition["status"] == "True" and "scale: OverflowError" in condition["message"]
    assert len(events(first, "ReconcileError")) == 1
    second = decide(observe(s, three_workers(), nodes, JobStatus.from_body(first.status), NOW + SECOND))
    assert not events(second, "ReconcileError"), "the same error is not posted again on every pass"
    (again,) = [c for c in second.status["conditions"] if c["type"] == "ReconcileError"]
    assert again["lastTransitionTime"] == condition["lastTransitionTime"]


# -- pods on a deleted node -----------------------------------------------------------------------------------------

def test_terminating_pods_on_a_deleted_node_are_force_deleted() -> None:
    """A worker being removed gracefully (a new round) whose node then vanished stays Terminating forever: no
    kubelet is left to finish it. Seen in the 500-node zone-loss benchmark."""
    s = spec(elastic__maxNodes=3)
    pods = three_workers()
    terminating = replace(pods[1], deleting=True, deletion_grace=90)
    status = JobStatus(round=1, serial=10, accounted=("w0",))
    d = decide(observe(s, [pods[0], terminating, *pods[2:]], base_nodes()[1:], status))
    assert act.DeletePod("w0", "node s-a deleted", 0) in d.actions
    forced = replace(terminating, deletion_grace=0)
    d = decide(observe(s, [pods[0], forced, *pods[2:]], base_nodes()[1:], status))
    assert not [a for a in of(d, act.DeletePod) if a.name == "w0"]


# -- the rendezvous store moves before its node goes (issue 15) --------------------------------------------------

def test_a_notice_on_the_store_node_checkpoints_then_moves_the_store_to_another_zone() -> None:
    s = spec(elastic__maxNodes=3)
    doomed_store_node = node("od-a", "on-demand", "us-east-1a", taints=KARPENTER)
    nodes = [*[n for n in base_nodes() if n.name != "od-a"], doomed_store_node,
             node("od-b", "on-demand", "us-east-1b")]
    pods = three_workers()
    first = decide(observe(s, pods, nodes))
    (request,) = of(first, act.RequestCheckpoint)
    assert len(request.pod_ips) == 3 and "od-a" in first.status["drains"]
    assert not of(first, act.EvictPod) and first.status["rendezvous"]["round"] == 1
    durable = {w: TrainerStatus(step=9, checkpoint_step=9, checkpoint_request_id=request.request_id)
               for w in ("w0", "w1", "w2")}
    moved = decide(observe(s, pods, nodes, JobStatus.from_body(first.status), NOW + SECOND, durable))
    assert moved.status["rendezvous"]["round"] == 2
    (new_store,) = [a.manifest for a in of(moved, act.CreatePod)
                    if a.manifest["metadata"]["labels"][wk.ROLE_LABEL] == "rendezvous"]
    assert new_store["spec"]["nodeSelector"][wk.ZONE] == "us-east-1b"
    assert events(moved, "RendezvousMoved") and not of(moved, act.EvictPod), "healthy workers are not evicted"
    assert moved.status["preemptions"] == 0 and moved.status["failures"] == 0
    # The same workers re-join the new store in their own pods: nothing is deleted or created for them.
    assert not of(moved, act.DeletePod) and not created(moved) and not of(moved, act.MoveRendezvous)
    assert moved.status["rendezvous"]["movingFrom"] == 1 and moved.draining
    new_store = replace(store("od-b", round_=2), ip="127.16.9.1")
    both = [*pods, new_store]
    told = decide(observe(s, both, nodes, JobStatus.from_body(moved.status), NOW + 5 * SECOND, durable))
    (move,) = of(told, act.MoveRendezvous)
    assert move.endpoint == "127.16.9.1:29400" and move.round == 2 and move.rendezvous_id == JOB.rendezvous_id(2)
    assert sorted(n for n, _ in move.pod_ips) == ["w0", "w1", "w2"]
    assert not of(told, act.DeletePod) and not created(told) and told.status["desiredWorkers"] == 3
    # Two have re-joined (their trainers report the new rendezvous): they take the new round's label; the third is
    # told again; the old store stays until the last one has re-joined.
    rejoined = {**durable, "w0": TrainerStatus(step=10, rendezvous_id=move.rendezvous_id),
                "w1": TrainerStatus(step=10, rendezvous_id=move.rendezvous_id)}
    partly = decide(observe(s, both, nodes, JobStatus.from_body(told.status), NOW + 9 * SECOND, rejoined))
    assert sorted(a.name for a in of(partly, act.LabelPod)) == ["w0", "w1"]
    assert act.LabelPod("w0", ((wk.ROUND_LABEL, "2"),)) in partly.actions
    assert [n for n, _ in of(partly, act.MoveRendezvous)[0].pod_ips] == ["w2"]
    assert not of(partly, act.DeletePod) and not created(partly)
    relabelled = [*(replace(w, round=2) for w in pods if w.role == "worker"), store("od-a"), new_store]
    formed = decide(observe(s, relabelled, nodes, JobStatus.from_body(partly.status), NOW + 20 * SECOND))
    assert [a for a in of(formed, act.DeletePod)] == [act.DeletePod("job-rdzv-g1", "old rendezvous round", 0)]
    assert "movingFrom" not in formed.status["rendezvous"] and not created(formed)
    assert formed.status["preemptions"] == 0 and formed.status["failures"] == 0


def test_a_worker_that_cannot_rejoin_the_moved_store_is_replaced() -> None:
    s = spec(elastic__maxNodes=3)
    nodes = [*base_nodes(), node("od-b", "on-demand", "us-east-1b")]
    moving = JobStatus(round=2, serial=10, moving_from=1, move_started=NOW)
    pods = [*(p for p in three_workers() if p.role == "worker"), store("od-a"),
            replace(store("od-b", round_=2), ip="127.16.9.1")]
    # w0's endpoint is unreachable: it cannot be told where the store went, so it is replaced; the others are told.
    d = decide(observe(s, pods, nodes, moving, NOW + SECOND, {"w0": None, "w1": TrainerStatus(step=3)}))
    assert [a.name for a in of(d, act.DeletePod)] == ["w0"]
    assert sorted(n for n, _ in of(d, act.MoveRendezvous)[0].pod_ips) == ["w1", "w2"]
    # Past the re-join timeout, the ones still on the old round are replaced as after a lost store.
    late = decide(observe(s, pods, nodes, moving, NOW + 4 * 60 * SECOND, {"w1": TrainerStatus(step=3)}))
    assert sorted(a.name for a in of(late, act.DeletePod)) == ["w0", "w1", "w2"] and not of(late, act.MoveRendezvous)


def test_a_store_lost_during_a_move_replaces_the_workers() -> None:
    s = spec(elastic__maxNodes=3)
    moving = JobStatus(round=2, serial=10, moving_from=1, move_started=NOW)
    pods = [*(p for p in three_workers() if p.role == "worker")]  # neither store is left
    d = decide(observe(s, pods, base_nodes(), moving, NOW + SECOND))
    assert events(d, "RendezvousLost") and d.status["rendezvous"]["round"] == 3
    assert sorted(a.name for a in of(d, act.DeletePod)) == ["w0", "w1", "w2"]
    assert "movingFrom" not in d.status["rendezvous"]


def test_a_cordoned_store_node_moves_the_store_too() -> None:
    s = spec(elastic__maxNodes=3)
    cordoned = replace(node("od-a", "on-demand", "us-east-1a"), unschedulable=True)
    nodes = [*[n for n in base_nodes() if n.name != "od-a"], cordoned, node("od-b", "on-demand", "us-east-1b")]
    first = decide(observe(s, three_workers(), nodes))
    assert first.status["drains"]["od-a"]["source"] == "rendezvous" and len(of(first, act.RequestCheckpoint)) == 1


def test_a_store_lost_without_notice_starts_a_new_round_and_says_what_was_lost() -> None:
    s = spec(elastic__maxNodes=2)
    pods = [store("gone"), worker("w0", "spot-cpu", "a", "s-a"), worker("w1", "spot-cpu", "b", "s-b", serial=2)]
    status = JobStatus(round=1, serial=10, last_checkpoint={"step": 40})
    d = decide(observe(s, pods, base_nodes(), status, trainers={"w0": TrainerStatus(step=52)}))
    (lost,) = events(d, "RendezvousLost")
    assert "12 steps since the checkpoint of step 40 are lost" in lost.message
    assert created(d) and d.status["rendezvous"]["round"] == 2


# -- the training script's own crashes count against the failure budget ---------------------------------------

def test_a_script_crashing_at_the_same_step_fails_the_job_after_max_failures() -> None:
    s = spec(elastic__maxNodes=3, budgets={"maxFailures": 2})
    pods = three_workers()
    status = JobStatus(round=1, serial=10)
    crash = "ValueError: the same bug at step 17"
    for n in range(1, 4):  # each crash hits every rank: one failure per crash, not one per pod
        reported = {w: TrainerStatus(step=17, script_failures=n, error=crash) for w in ("w0", "w1", "w2")}
        d = decide(observe(s, pods, base_nodes(), status, NOW + n * SECOND, reported))
        status = JobStatus.from_body(d.status)
        assert d.status["failures"] == n
    assert d.status["phase"] == "Failed"
    (failed,) = [c for c in d.status["conditions"] if c["type"] == "Failed"]
    assert crash in failed["message"] and d.status["lastError"] == crash


def test_a_crash_already_counted_is_not_counted_again() -> None:
    s = spec(elastic__maxNodes=3)
    pods = three_workers()
    reported = {"w0": TrainerStatus(step=5, script_failures=1, error="KeyError: 'x'")}
    first = decide(observe(s, pods, base_nodes(), JobStatus(round=1, serial=10), trainers=reported))
    again = decide(observe(s, pods, base_nodes(), JobStatus.from_body(first.status), NOW + SECOND, reported))
    assert first.status["failures"] == 1 and again.status["failures"] == 1


def test_a_store_stranded_in_a_zone_without_nodes_is_replaced_elsewhere() -> None:
    s = spec(elastic__maxNodes=2)
    stranded = replace(store(round_=2), node=None, phase="Pending", ready=False, zone="us-east-1a",
                       unschedulable_since=NOW - SECOND)
    nodes = [*[n for n in base_nodes() if n.name != "od-a"], node("od-b", "on-demand", "us-east-1b")]
    d = decide(observe(s, [stranded], nodes, JobStatus(round=2, serial=10)))
    assert d.status["rendezvous"]["round"] == 3
    (new_store,) = [a.manifest for a in of(d, act.CreatePod)
                    if a.manifest["metadata"]["labels"][wk.ROLE_LABEL] == "rendezvous"]
    assert new_store["spec"]["nodeSelector"][wk.ZONE] == "us-east-1b"
