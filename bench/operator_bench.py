"""Operator reaction time at scale: 500 KWOK nodes, 50 running jobs, the real operator process.

Measures (1) signal on a Node -> checkpoint request received by the job's workers, p50/p99 over many single
notices, (2) the time for every job to be back at its target after one zone loses all its nodes at once, repeated
zone after zone (each zone's nodes come back before the next is lost), and (3) the operator's resident memory.
When a job does not come back, the benchmark says which and why (phase, conditions, pending pods and the
scheduler's reasons, the operator's decisions for it). Results: bench/results/operator.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.testing import FakeTrainerEndpoints, Harness, wait_for
from spotrain_dev.topology import POOL_LABEL
from spotrain_operator import wellknown as wk

HERE = Path(__file__).resolve().parent
TOPOLOGY = HERE / "cluster-500.yaml"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--notices", type=int, default=40)
    parser.add_argument("--zone-losses", type=int, default=3, help="zone losses to measure, one zone after another")
    parser.add_argument("--out", default=str(HERE / "results" / "operator.json"))
    parser.add_argument("--topology", default=str(TOPOLOGY))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="spotrain-bench-"))
    try:
        cluster = DevCluster(workdir / "cluster", topology_file=Path(args.topology))
        cluster.start()
        try:
            return run(cluster, workdir, args)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(cluster: DevCluster, workdir: Path, args: argparse.Namespace) -> int:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    nodes = NodeSimulator.from_kubeconfig(cluster.kubeconfig)
    node_count = len(core.list_node().items)
    namespace = "bench"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for("default ServiceAccount", lambda: core.list_namespaced_service_account(namespace).items)
    harness = Harness(cluster, namespace, api, nodes, workdir)
    try:
        return measure(harness, core, nodes, node_count, namespace, args)
    except Exception:
        log = workdir / "operator-0.log"
        if log.exists():  # the operator's own account, before the temporary directory goes
            print("[bench] the operator's log, last 60 lines:\n" + "\n".join(log.read_text().splitlines()[-60:]),
                  file=sys.stderr)
        raise
    finally:
        harness.cleanup()


class PeakRss:
    """Samples a process's resident memory (VmRSS) every second and keeps the peak, in MiB."""

    def __init__(self, pid: int):
        self.pid, self.peak_mb, self._stop = pid, 0.0, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
            except OSError:
                return

    def stop(self) -> float:
        self._stop.set()
        return round(self.peak_mb, 1)


def stuck_report(harness: Harness, core: client.CoreV1Api, namespace: str, jobs: list[str]) -> str:
    """Why jobs are not back: their phase, conditions and counts, their pods that are not running (with the
    scheduler's reason) and their last events."""
    lines = []
    pods = core.list_namespaced_pod(namespace).items
    events = core.list_namespaced_event(namespace).items
    for job in jobs:
        status = harness.status(job)
        conditions = ", ".join(f"{c['type']}={c['status']} ({c.get('reason')}: {c.get('message')})"
                               for c in status.get("conditions", []) if c.get("status") == "True")
        lines.append(f"- {job}: phase {status.get('phase')}, ready {status.get('readyWorkers')}/"
                     f"{status.get('desiredWorkers')}, round {status.get('rendezvous', {}).get('round')}, "
                     f"drains {sorted(status.get('drains') or {})}; {conditions}")
        for pod in pods:
            if (pod.metadata.labels or {}).get(wk.JOB_LABEL) != job:
                continue
            if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp:
                continue
            scheduled = next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)
            why = f"{scheduled.reason}: {scheduled.message}" if scheduled and scheduled.status != "True" else ""
            lines.append(f"    pod {pod.metadata.name} {pod.status.phase} on {pod.spec.node_name} "
                         f"deleting={bool(pod.metadata.deletion_timestamp)} {why}")
        recent = sorted((e for e in events if e.involved_object.name == job),
                        key=lambda e: e.last_timestamp or e.first_timestamp or 0)[-4:]
        lines.extend(f"    event {e.reason}: {e.message}" for e in recent)
    return "\n".join(lines)


def measure(harness: Harness, core: client.CoreV1Api, nodes: NodeSimulator, node_count: int, namespace: str,
            args: argparse.Namespace) -> int:
    print(f"[bench] {node_count} nodes; starting the operator and {args.jobs} jobs", file=sys.stderr)
    operator = harness.start_operator("--resync", "10")
    memory = PeakRss(operator.pid)

    def all_workers() -> list[client.V1Pod]:
        return list(core.list_namespaced_pod(namespace, label_selector=f"{wk.ROLE_LABEL}=worker").items)

    pools = [{"name": "spot-cpu", "capacityType": "spot", "nodeSelector": {"dev.spotrain.dev/pool": "spot-cpu"}},
             {"name": "on-demand", "capacityType": "on-demand",
              "nodeSelector": {"dev.spotrain.dev/pool": "on-demand"}}]
    with FakeTrainerEndpoints(harness, delay=0.5) as trainers:
        started = time.monotonic()
        for i in range(args.jobs):
            manifest = harness.job_manifest(f"job-{i:02d}", min_nodes=2, max_nodes=4, pools=pools)
            del manifest["spec"]["fallback"]
            harness.create_job(manifest)

        def ready_jobs() -> int:
            items = harness.custom.list_namespaced_custom_object(wk.GROUP, wk.VERSION, namespace, wk.PLURAL)["items"]
            return sum(1 for j in items if (j.get("status") or {}).get("readyWorkers") == 4)

        wait_for("all jobs at 4 workers", lambda: ready_jobs() == args.jobs, timeout=600, interval=2)
        bring_up = time.monotonic() - started
        wait_for(f"every endpoint up ({trainers.errors})", lambda: len(trainers.serving) >= 4 * args.jobs,
                 timeout=120)
        print(f"[bench] {args.jobs} jobs x 4 workers up in {bring_up:.1f} s; measuring reaction", file=sys.stderr)

        reactions = []
        pods = {p.metadata.name: p for p in all_workers()}
        # One victim per job: notices for a job whose checkpoint is still in flight join that request (a burst
        # is one checkpoint), which is right for the job but would not measure a reaction.
        first_of_job: dict[str, client.V1Pod] = {}
        for p in pods.values():
            first_of_job.setdefault(p.metadata.labels[wk.JOB_LABEL], p)
        victims = list(first_of_job.values())[: args.notices]
        for pod in victims:
            job = pod.metadata.labels[wk.JOB_LABEL]
            peers = [p.metadata.name for p in pods.values() if p.metadata.labels[wk.JOB_LABEL] == job]
            before = {p: len(trainers.requests.get(p, [])) for p in peers}
            t0 = time.monotonic()
            nodes.signal(pod.spec.node_name, "karpenter")
            def requested(peers: list[str] = peers, before: dict[str, int] = before) -> bool:
                return any(len(trainers.requests.get(p, [])) > before[p] for p in peers)

            try:
                wait_for("request", requested, timeout=60, interval=0.005)
            except AssertionError:
                status = harness.status(job)
                print(f"[bench] no request for {pod.metadata.name} on {pod.spec.node_name}: drains "
                      f"{status.get('drains')}, requests {[len(trainers.requests.get(p, [])) for p in peers]}",
                      file=sys.stderr)
                raise
            arrival = min(r["at"] for p in peers for r in trainers.requests.get(p, [])[before[p]:])
            reactions.append(arrival - t0)
        print(f"[bench] reaction p50 {statistics.median(reactions) * 1000:.0f} ms", file=sys.stderr)

        wait_for("jobs settle after the notices", lambda: ready_jobs() >= args.jobs - len(victims), timeout=300,
                 interval=2)
        wait_for("every job back at 4 workers after the notices", lambda: ready_jobs() == args.jobs, timeout=300,
                 interval=2)
        zones = sorted({n.metadata.labels[wk.ZONE] for n in core.list_node(label_selector=wk.ZONE).items})
        losses = []
        for i in range(args.zone_losses):
            losses.append(zone_loss(harness, core, nodes, namespace, zones[i % len(zones)], ready_jobs, args.jobs,
                                    all_workers))
            print(f"[bench] zone loss {i + 1}/{args.zone_losses}: {losses[-1]['zone']} "
                  f"({losses[-1]['nodes_removed']} nodes, {losses[-1]['jobs_hit']} jobs hit) converged in "
                  f"{losses[-1]['converge_seconds']} s", file=sys.stderr)
        rss = memory.stop()

    converge = [loss["converge_seconds"] for loss in losses]
    result: dict[str, Any] = {
        "nodes": node_count, "jobs": args.jobs, "workers": 4 * args.jobs,
        "bring_up_seconds": round(bring_up, 2),
        "reaction_ms": {"samples": len(reactions), "p50": round(percentile(reactions, 0.5) * 1000, 1),
                        "p99": round(percentile(reactions, 0.99) * 1000, 1),
                        "max": round(max(reactions) * 1000, 1)},
        "zone_loss": {"runs": losses, "nodes_removed": losses[0]["nodes_removed"] if losses else 0,
                      "converge_seconds": round(statistics.median(converge), 2) if converge else None,
                      "converge_p50_seconds": round(statistics.median(converge), 2) if converge else None,
                      "converge_worst_seconds": max(converge) if converge else None},
        "rss_mb": rss,
        # The keys bench/run.py gathers into bench/results.json (documented in docs/benchmarks.md).
        "reaction_p50_s": round(percentile(reactions, 0.5), 3),
        "reaction_p99_s": round(percentile(reactions, 0.99), 3),
        "zone_loss_converge_p50_s": round(statistics.median(converge), 2) if converge else None,
        "zone_loss_converge_worst_s": max(converge) if converge else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


def zone_loss(harness: Harness, core: client.CoreV1Api, nodes: NodeSimulator, namespace: str, zone: str,
              ready_jobs: Callable[[], int], job_count: int,
              all_workers: Callable[[], list[client.V1Pod]]) -> dict[str, Any]:
    """Removes every node of ``zone`` at once, waits for every job to be back, then brings the zone's nodes back
    (new nodes, the same pools) so that the next loss starts from the full topology."""
    lost = core.list_node(label_selector=f"{wk.ZONE}={zone}").items
    doomed = [n.metadata.name for n in lost]
    hit = {p.metadata.labels[wk.JOB_LABEL] for p in all_workers() if p.spec.node_name in doomed}
    serial_before = {job: harness.status(job).get("podSerial", 0) for job in hit}
    t0 = time.monotonic()
    for name in doomed:
        nodes.remove(name)

    def converged() -> bool:
        # Every job hit has replaced its lost workers (new pods created) and is back at 4 ready workers, none
        # left on a lost node.
        if ready_jobs() != job_count:
            return False
        if any(harness.status(job).get("podSerial", 0) <= serial_before[job] for job in hit):
            return False
        return not any(p.spec.node_name in doomed for p in all_workers())

    try:
        wait_for(f"every job back at 4 workers after losing {zone}", converged, timeout=600, interval=0.5)
    except AssertionError:
        items = harness.custom.list_namespaced_custom_object(wk.GROUP, wk.VERSION, namespace, wk.PLURAL)["items"]
        stuck = [j["metadata"]["name"] for j in items if (j.get("status") or {}).get("readyWorkers") != 4
                 or (j["metadata"]["name"] in hit and (j.get("status") or {}).get("podSerial", 0)
                 <= serial_before[j["metadata"]["name"]])]
        on_lost = [p.metadata.name for p in all_workers() if p.spec.node_name in doomed]
        print(f"[bench] {len(stuck)} job(s) stuck after losing {zone}; workers still on lost nodes: {on_lost}\n"
              + stuck_report(harness, core, namespace, stuck), file=sys.stderr)
        raise
    converge = time.monotonic() - t0
    for node in lost:
        labels = node.metadata.labels
        nodes.add(labels[POOL_LABEL], zone, instance_type=labels.get(wk.INSTANCE_TYPE))
    return {"zone": zone, "nodes_removed": len(doomed), "jobs_hit": len(hit), "converge_seconds": round(converge, 2)}


if __name__ == "__main__":
    sys.exit(main())
