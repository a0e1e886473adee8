"""Operator reaction time at scale: 500 KWOK nodes, 50 running jobs, the real operator process.

Measures (1) signal on a Node -> checkpoint request received by the job's workers, p50/p99 over many single
notices, and (2) the time for every job to be back at its target after one zone loses all its nodes at once.
Results: bench/results/operator.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.testing import FakeTrainerEndpoints, Harness, wait_for
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
    parser.add_argument("--out", default=str(HERE / "results" / "operator.json"))
    parser.add_argument("--topology", default=str(TOPOLOGY))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="spotrain-bench-"))
    cluster = DevCluster(workdir / "cluster", topology_file=Path(args.topology))
    cluster.start()
    try:
        return run(cluster, workdir, args)
    finally:
        cluster.stop()


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
    finally:
        harness.cleanup()


def measure(harness: Harness, core: client.CoreV1Api, nodes: NodeSimulator, node_count: int, namespace: str,
            args: argparse.Namespace) -> int:
    print(f"[bench] {node_count} nodes; starting the operator and {args.jobs} jobs", file=sys.stderr)
    harness.start_operator("--resync", "10")

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
        zone = "us-east-1a"
        doomed = [n.metadata.name for n in core.list_node(label_selector=f"{wk.ZONE}={zone}").items]
        hit = {p.metadata.labels[wk.JOB_LABEL] for p in all_workers() if p.spec.node_name in doomed}
        serial_before = {job: harness.status(job).get("podSerial", 0) for job in hit}
        t0 = time.monotonic()
        for name in doomed:
            nodes.remove(name)

        def converged() -> bool:
            # Every job hit has replaced its lost workers (new pods created) and is back at 4 ready workers, none
            # left in the lost zone.
            if ready_jobs() != args.jobs:
                return False
            if any(harness.status(job).get("podSerial", 0) <= serial_before[job] for job in hit):
                return False
            return not any(p.spec.node_name in doomed for p in all_workers())

        wait_for("every job back at 4 workers", converged, timeout=600, interval=0.5)
        converge = time.monotonic() - t0

    result: dict[str, Any] = {
        "nodes": node_count, "jobs": args.jobs, "workers": 4 * args.jobs,
        "bring_up_seconds": round(bring_up, 2),
        "reaction_ms": {"samples": len(reactions), "p50": round(percentile(reactions, 0.5) * 1000, 1),
                        "p99": round(percentile(reactions, 0.99) * 1000, 1),
                        "max": round(max(reactions) * 1000, 1)},
        "zone_loss": {"zone": zone, "nodes_removed": len(doomed), "jobs_hit": len(hit),
                      "converge_seconds": round(converge, 2)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
