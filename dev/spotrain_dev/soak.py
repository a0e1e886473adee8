"""Fault soak: a job lives through notices, joins and node losses while its operator is SIGKILLed at random
moments and the API server restarts once in the middle of a drain. Afterwards nothing may be duplicated,
orphaned, evicted twice or drained late. The test suite runs a short soak; ``make bench`` a long one.
"""

from __future__ import annotations

import datetime
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from spotrain_dev.testing import TEST_LABEL, ZONES, FakeTrainerEndpoints, Harness, wait_for
from spotrain_dev.topology import POOL_LABEL
from spotrain_operator import wellknown as wk

# The notice each signal gives at the least (GKE's is 30 s; the others are given 60 s here or have 120 s).
SIGNAL_NOTICE_SECONDS = {"karpenter": 60, "nth-spot-itn": 60, "gke-impending": 30, "spotrain-agent": 60}
NOTICE_SIGNALS = tuple(SIGNAL_NOTICE_SECONDS)


@dataclass
class SoakReport:
    kills: int = 0
    apiserver_restarts: int = 0
    notices: int = 0
    joins: int = 0
    losses: int = 0
    late_drains: list[str] = field(default_factory=list)  # "pod: gone N s after its deadline"
    double_evictions: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.late_drains or self.double_evictions or self.duplicates or self.orphans)


def run_soak(harness: Harness, *, kills: int, seed: int, restart_apiserver: bool = True,
             log: Any = None) -> SoakReport:
    """Runs the soak in ``harness``'s namespace with its own nodes; returns what it found (see SoakReport)."""
    say = log or (lambda message: print(f"[soak] {message}", file=sys.stderr, flush=True))
    rng = random.Random(seed)
    report = SoakReport()
    spot = [harness.add_node("spot-cpu", ZONES[i % 3]) for i in range(5)]
    stable = [harness.add_node("on-demand", z) for z in ZONES[:2]]
    harness.wait_nodes_ready([*spot, *stable])
    manifest = harness.job_manifest(min_nodes=1, max_nodes=3)
    manifest["spec"]["elastic"]["scaleUpWindow"] = "2s"
    manifest["spec"]["placement"]["cooldown"] = "5s"
    del manifest["spec"]["fallback"]
    deadlines: dict[str, datetime.datetime] = {}  # doomed pod -> its node's deadline
    try:
        with FakeTrainerEndpoints(harness, delay=2.0) as endpoints:
            operator = harness.start_operator()
            harness.create_job(manifest)
            wait_for("3 workers", lambda: harness.status().get("readyWorkers") == 3, timeout=120)
            for round_ in range(kills):
                action = rng.choice(["notice", "notice", "join", "loss"])
                workers = _healthy_workers(harness)
                if action == "notice" and workers:
                    victim = rng.choice(workers)
                    signal = rng.choice(NOTICE_SIGNALS)
                    harness.nodes.signal(victim.spec.node_name, signal, lead_seconds=60)
                    deadlines[victim.metadata.name] = (datetime.datetime.now(datetime.UTC)
                                                       + datetime.timedelta(seconds=SIGNAL_NOTICE_SECONDS[signal]))
                    report.notices += 1
                    say(f"{round_}: {signal} on {victim.spec.node_name} ({victim.metadata.name})")
                elif action == "join":
                    spot.append(harness.add_node("spot-cpu", rng.choice(ZONES)))
                    report.joins += 1
                    say(f"{round_}: node {spot[-1]} joins")
                elif workers:
                    victim = rng.choice(workers)
                    harness.nodes.remove(victim.spec.node_name)
                    report.losses += 1
                    say(f"{round_}: node {victim.spec.node_name} lost without notice")
                time.sleep(rng.uniform(0.0, 3.0))  # the kill lands at a random moment of the reaction
                harness.kill(operator)
                report.kills += 1
                if restart_apiserver and round_ == kills // 2 and harness.status().get("drains"):
                    say(f"{round_}: restarting kube-apiserver mid-drain")
                    harness.cluster.restart_apiserver()
                    report.apiserver_restarts += 1
                operator = harness.start_operator()
                wait_for("the job back at 3 workers", lambda: harness.status().get("readyWorkers", 0) >= 1
                         and not harness.status().get("drains"), timeout=180)
                for pod, deadline in list(deadlines.items()):
                    wait_for(f"{pod} drained", lambda pod=pod: harness.gone(pod), timeout=120)  # type: ignore[misc]
                    late = (datetime.datetime.now(datetime.UTC) - deadline).total_seconds()
                    if late > 0:
                        report.late_drains.append(f"{pod}: gone {late:.0f} s after its deadline")
                    del deadlines[pod]
            if restart_apiserver and not report.apiserver_restarts:
                # No drain was in flight at the midpoint: make one, and restart the API server in the middle of it.
                # The victim's control endpoint must answer (one that does not is drained at once, in less time
                # than a poll takes), and its checkpoint is held back until the API server is back.
                victim = wait_for("a worker with a control endpoint on a healthy node", lambda: [
                    w for w in _healthy_workers(harness) if w.metadata.name in endpoints.serving], timeout=120)[0]
                endpoints.delay = 3600.0
                harness.nodes.signal(victim.spec.node_name, "karpenter", lead_seconds=60)
                wait_for("drain recorded", lambda: victim.spec.node_name in (harness.status().get("drains") or {}))
                harness.cluster.restart_apiserver()
                report.apiserver_restarts += 1
                endpoints.delay = 2.0
                wait_for(f"{victim.metadata.name} drained", lambda: harness.gone(victim.metadata.name), timeout=120)
            def settled() -> bool:
                # The invariants below are what the soak checks; a worker still waiting to be placed after the last
                # event is allowed (whether it is placed is the placement tests' business).
                status = harness.status()
                return status.get("readyWorkers", 0) >= 1 and not status.get("drains")

            try:
                wait_for("the job settled", settled, timeout=180)
            except AssertionError as e:
                status = harness.status()
                shown = {k: status.get(k) for k in ("phase", "readyWorkers", "drains", "cooldowns", "conditions")}
                raise AssertionError(f"{e}: {_usable(harness)} usable nodes; status {shown}") from None
            harness.wait_reconciles()  # the operator has looked at the settled world before it is judged
            _check_end_state(harness, report)
    except AssertionError as e:  # what the operator was doing is what explains a soak that did not settle
        tail = "\n".join(harness.operator_log(len(harness.operators) - 1).splitlines()[-40:])
        raise AssertionError(f"{e}\n--- the last operator's log, last 40 lines ---\n{tail}") from None
    return report


def _healthy_workers(harness: Harness) -> list[Any]:
    """Running workers on nodes that still exist without a notice: the ones a new event can hit."""
    nodes = {n.metadata.name: n for n in harness.core.list_node(label_selector=f"{TEST_LABEL}={harness.namespace}")
             .items}
    return [w for w in harness.running_workers()
            if w.spec.node_name in nodes and not nodes[w.spec.node_name].spec.taints]


def _usable(harness: Harness) -> int:
    nodes = harness.core.list_node(label_selector=f"{POOL_LABEL}=spot-cpu,{TEST_LABEL}={harness.namespace}").items
    return sum(1 for n in nodes if not n.spec.taints and not n.spec.unschedulable)


def _check_end_state(harness: Harness, report: SoakReport) -> None:
    status = harness.status()
    pods = harness.core.list_namespaced_pod(harness.namespace).items
    nodes = {n.metadata.name for n in harness.core.list_node().items}
    live = [p for p in pods if not p.metadata.deletion_timestamp and p.status.phase in ("Pending", "Running")]
    round_ = str(status["rendezvous"]["round"])
    workers = [p for p in live if p.metadata.labels.get(wk.ROLE_LABEL) == "worker"]
    stores = [p for p in live if p.metadata.labels.get(wk.ROLE_LABEL) == "rendezvous"]
    per_node = Counter(p.spec.node_name for p in workers if p.spec.node_name)
    report.duplicates += [f"{n}: {c} workers" for n, c in per_node.items() if c > 1]
    if len(workers) > 3:
        report.duplicates.append(f"{len(workers)} live workers for maxNodes 3")
    if len(stores) != 1:
        report.duplicates.append(f"{len(stores)} live rendezvous stores")
    for p in pods:
        owners = p.metadata.owner_references or []
        if not any(o.kind == wk.KIND for o in owners):
            report.orphans.append(f"{p.metadata.name}: no owner")
        if p.spec.node_name and p.spec.node_name not in nodes:
            report.orphans.append(f"{p.metadata.name}: on deleted node {p.spec.node_name}")
        if p in live and p.metadata.labels.get(wk.ROUND_LABEL) != round_:
            report.orphans.append(f"{p.metadata.name}: of round {p.metadata.labels.get(wk.ROUND_LABEL)}")
    # Each preemption is decided once however often the operator died around it: one event and one count per pod.
    preempted = Counter(m.group(1) for e in harness.events("WorkerPreempted")
                        if (m := _PREEMPTED_WORKER.match(e.message or "")))
    report.double_evictions += [f"{pod}: preempted {n} times" for pod, n in preempted.items() if n > 1]
    if status.get("preemptions", 0) != len(preempted):
        report.double_evictions.append(f"status counts {status.get('preemptions')} preemptions of "
                                       f"{len(preempted)} workers")


_PREEMPTED_WORKER = re.compile(r"worker (\S+) on ")
