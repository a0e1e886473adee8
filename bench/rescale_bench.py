"""What one preemption costs, measured for real: the phases of a rescale on the devcluster with torchrun workers.

    python bench/rescale_bench.py [--repeats 3] [--out bench/results/rescale.json]

A job of three workers (bench/rescale_train.py: examples/train_tiny.py's model, every phase timestamped) runs
through the pod runner (real spotrain-launch -> torchrun -> Python processes on KWOK pods), checkpoints to a moto
S3 server on 127.0.0.1, and the real operator drives it. Each repeat injects, in turn:

* ``notice``: an AWS Node Termination Handler spot-itn taint (120 s notice) on one worker's node. Phases: notice
  -> checkpoint request at the workers (the control server's request file) -> checkpoint durable (the status
  file's handled request) -> doomed pod stopped (pod runner) -> survivors' last step at 3 -> first step at 2.
  The node is then deleted (reclaimed) and a new one added:
* ``join``: node Ready -> replacement pod started -> first step at 3.
* ``no_notice``: a worker's processes SIGKILLed and its node deleted at once (an instance gone without warning);
  steps lost = last step at 3 - step restored. A new node joins again (another ``join`` sample).
* ``rendezvous_loss``: the c10d store pod deleted with no grace: a new round, every worker restarts.

For each restart of the worker group, where the time went: ``stop_and_rendezvous`` (last step at the old size ->
the new worker processes start: the checkpoint on SIGTERM, exit, torchrun's rendezvous round, spawn),
``import`` (interpreter and torch), ``process_group`` (spotrain Session: process group, storage), ``restore``
and ``first_step``. P50/P95 over the repeats go to bench/results/rescale.json with ``simulator_costs``, the
values ``spotrain simulate`` uses (simulate/costs.py keeps the defaults from one such run).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config

from spotrain_dev.cluster import DevCluster
from spotrain_dev.demo import DUMMY_KEYS, s3_client, start_moto
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.podrunner import HARD_KILL_SIGNAL, PodRunner, RunnerEvent
from spotrain_dev.processes import free_port
from spotrain_dev.testing import ZONES, Harness, wait_for

HERE = Path(__file__).resolve().parent
BUCKET = "rescale-bench"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def say(message: str) -> None:
    print(f"[bench] rescale: {message}", file=sys.stderr, flush=True)


class Timeline:
    """The JSON lines every worker appends (bench/rescale_train.py), read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.step_records: list[dict[str, Any]] = []
        self.step_times: list[float] = []
        self._offset = 0

    def refresh(self) -> list[dict[str, Any]]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.decode().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.records.append(record)
                    if record["event"] == "step":
                        self.step_records.append(record)
                        self.step_times.append(record["time"])
        return self.records

    def steps(self, after: float = 0.0) -> list[dict[str, Any]]:
        self.refresh()
        return self.step_records[bisect.bisect_right(self.step_times, after):]

    def first_step(self, world: int, after: float) -> dict[str, Any] | None:
        return next((r for r in self.steps(after) if r["world_size"] == world), None)

    def last_step(self, world: int, before: float) -> dict[str, Any] | None:
        self.refresh()
        end = bisect.bisect_left(self.step_times, before)
        return next((r for r in reversed(self.step_records[:end]) if r["world_size"] == world), None)

    def group_start(self, after: float, before: float) -> dict[str, float]:
        """When the worker group that took its first step at ``before`` went through each start phase (rank 0)."""
        phases: dict[str, float] = {}
        for r in self.refresh():
            if after < r["time"] <= before and r["rank"] == 0 and r["event"] in ("process_start", "imported",
                                                                                  "session", "restored"):
                phases[r["event"]] = r["time"]
                if r["event"] == "restored":
                    phases["restored_step"] = r["step"]
        return phases


class Bench:
    def __init__(self, harness: Harness, runner: PodRunner, timeline: Timeline) -> None:
        self.h = harness
        self.runner = runner
        self.timeline = timeline
        self.events: list[tuple[float, RunnerEvent]] = []
        self.samples: dict[str, list[dict[str, Any]]] = {"notice": [], "join": [], "no_notice": [],
                                                         "rendezvous_loss": [], "store_move": []}
        self.lock = threading.Lock()

    def on_event(self, event: RunnerEvent) -> None:
        with self.lock:
            self.events.append((time.time(), event))

    def event_time(self, pod: str, kinds: tuple[str, ...], after: float) -> float | None:
        with self.lock:
            return next((t for t, e in self.events if e.pod == pod and e.kind in kinds and t >= after), None)

    def state_dir(self, pod: str) -> Path:
        return self.runner.workdir / "pods" / self.h.namespace / pod / "state"

    def worker_on(self, node: str) -> str:
        return next(p.metadata.name for p in self.h.running_workers() if p.spec.node_name == node)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 300, interval: float = 0.05) -> Any:
        return wait_for(what, check, timeout=timeout, interval=interval)

    def training_at(self, world: int) -> None:
        now = time.time()
        self.wait(f"training at world size {world}", lambda: len([s for s in self.timeline.steps(now)
                                                                   if s["world_size"] == world]) >= 5)

    def phases(self, event_at: float, old_world: int, new_world: int) -> dict[str, Any]:
        first = self.wait(f"the first step at world size {new_world}",
                          lambda: self.timeline.first_step(new_world, event_at), timeout=300)
        last_old = self.timeline.last_step(old_world, first["time"])
        start = self.timeline.group_start(last_old["time"] if last_old else event_at, first["time"])
        out: dict[str, Any] = {"to_first_step_s": first["time"] - event_at, "first_step": first["step"],
                               "last_old_step": last_old["step"] if last_old else None,
                               "restored_step": start.get("restored_step")}
        if last_old and "restored_step" in start:
            out["steps_lost"] = max(0, last_old["step"] + 1 - start["restored_step"])
        if last_old:
            out["last_old_step_after_s"] = last_old["time"] - event_at
        chain = [("stop_and_rendezvous", last_old["time"] if last_old else None, start.get("process_start")),
                 ("import", start.get("process_start"), start.get("imported")),
                 ("process_group", start.get("imported"), start.get("session")),
                 ("restore", start.get("session"), start.get("restored")),
                 ("first_step", start.get("restored"), first["time"])]
        for name, a, b in chain:
            if a is not None and b is not None:
                out[f"{name}_s"] = b - a
        return out

    # -- the events ------------------------------------------------------------------------------------------

    def notice(self, node: str) -> str:
        doomed = self.worker_on(node)
        survivors = [p.metadata.name for p in self.h.running_workers() if p.metadata.name != doomed]
        t0 = time.time()
        self.h.nodes.signal(node, "nth-spot-itn", lead_seconds=120)
        requested = durable = None
        request_id = None
        deadline = time.monotonic() + 120
        while (requested is None or durable is None) and time.monotonic() < deadline:
            for pod in [doomed, *survivors]:
                with contextlib.suppress(OSError, ValueError):
                    request = self.state_dir(pod) / "request.json"
                    if requested is None and request.stat().st_mtime >= t0 - 1:
                        requested = request.stat().st_mtime
                        request_id = json.loads(request.read_text()).get("id")
                    status = json.loads((self.state_dir(pod) / "status.json").read_text())
                    if durable is None and request_id and status.get("handled_request_id") == request_id:
                        durable = time.time()
            if self.timeline.first_step(2, t0):
                break
            time.sleep(0.02)
        sample = self.phases(t0, 3, 2)
        stopped = self.event_time(doomed, ("exited", "killed"), t0)
        evicted = self.event_time(doomed, ("terminating",), t0)
        sample.update({"requested_s": None if requested is None else requested - t0,
                       "durable_s": None if durable is None else durable - t0,
                       "evicted_s": None if evicted is None else evicted - t0,
                       "doomed_stopped_s": None if stopped is None else stopped - t0})
        self.samples["notice"].append(sample)
        say(f"notice: first step at world 2 after {sample['to_first_step_s']:.1f} s, "
            f"{sample.get('steps_lost')} steps lost")
        self.wait("the doomed pod stopped", lambda: self.event_time(doomed, ("exited", "killed"), t0), timeout=180)
        self.h.nodes.remove(node)  # the instance is reclaimed
        return node

    def join(self, zone: str) -> str:
        t_add = time.time()
        node = self.h.add_node("spot-cpu", zone)
        self.h.wait_nodes_ready([node])
        ready = time.time()
        sample = self.phases(ready, 2, 3)
        sample["node_ready_after_add_s"] = ready - t_add
        pod = self.wait("the replacement's pod", lambda: next(
            (p.metadata.name for p in self.h.pods() if p.spec.node_name == node), None), timeout=120)
        started = self.event_time(pod, ("started",), t_add)
        sample["pod_started_s"] = None if started is None else started - ready
        self.samples["join"].append(sample)
        say(f"join: first step at world 3 {sample['to_first_step_s']:.1f} s after the node was Ready")
        return node

    def no_notice(self, node: str) -> None:
        victim = self.worker_on(node)
        t0 = time.time()
        container = next(c for c in self.runner._containers.values() if c.pod == victim)
        with contextlib.suppress(ProcessLookupError):
            os.kill(container.popen.pid, HARD_KILL_SIGNAL)  # the shim SIGKILLs the whole container
        self.h.nodes.remove(node)
        sample = self.phases(t0, 3, 2)
        self.samples["no_notice"].append(sample)
        say(f"no notice: first step at world 2 after {sample['to_first_step_s']:.1f} s, "
            f"{sample.get('steps_lost')} steps lost")

    def running_store(self) -> Any:
        return next(p for p in self.h.pods("rendezvous") if p.status.phase == "Running"
                    and not p.metadata.deletion_timestamp)

    def rendezvous_loss(self) -> None:
        store = self.running_store()
        t0 = time.time()
        self.h.core.delete_namespaced_pod(store.metadata.name, self.h.namespace, grace_period_seconds=0)
        sample = self.restart_sample("rendezvous_loss", "the store was lost", t0)
        say(f"rendezvous loss: first step after {sample['to_first_step_s']:.1f} s at world {sample['world_size']}, "
            f"{sample.get('steps_lost')} steps lost")

    def store_move(self) -> None:
        """A notice on the store's node: the planned move (checkpoint, new store elsewhere, next round), to set
        the pause the workers see next to a worker preemption's and an unplanned store loss's."""
        store = self.running_store()
        node = store.spec.node_name
        t0 = time.time()
        self.h.nodes.signal(node, "karpenter")
        sample = self.restart_sample("store_move", "the store moved", t0)
        say(f"store move: first step after {sample['to_first_step_s']:.1f} s at world {sample['world_size']}, "
            f"{sample.get('steps_lost')} steps lost")
        self.wait("the old store gone", lambda: store.metadata.name not in
                  {p.metadata.name for p in self.h.pods("rendezvous")}, timeout=180)
        zone = self.h.node_zone(node)
        self.h.nodes.remove(node)  # the instance is reclaimed; stable capacity comes back in its zone
        self.h.wait_nodes_ready([self.h.add_node("on-demand", zone)])

    def restart_sample(self, kind: str, what: str, t0: float) -> dict[str, Any]:
        """The first step of worker processes started after ``t0`` (a new rendezvous round), and the steps lost."""
        first = self.wait(f"the first step after {what}", lambda: next(
            (s for s in self.timeline.steps(t0) if s["restart"] == 0 and s["world_size"] >= 2
             and any(r["event"] == "process_start" and t0 < r["time"] < s["time"] and r["pod"] == s["pod"]
                     for r in self.timeline.refresh())), None), timeout=300)
        last_old = [s for s in self.timeline.steps() if s["time"] < first["time"]
                    and not any(r["event"] == "process_start" and t0 < r["time"] < s["time"] and r["pod"] == s["pod"]
                                for r in self.timeline.refresh())]
        start = self.timeline.group_start(t0, first["time"])
        sample = {"to_first_step_s": first["time"] - t0, "world_size": first["world_size"]}
        if last_old and "restored_step" in start:
            sample["steps_lost"] = max(0, last_old[-1]["step"] + 1 - start["restored_step"])
        self.samples[kind].append(sample)
        return sample


def summary(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, rows in samples.items():
        keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, int | float)})
        out[kind] = {"n": len(rows)}
        for key in keys:
            values = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
            out[kind][key] = {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}
    return out


def simulator_costs(s: dict[str, Any]) -> dict[str, float]:
    """The measured P50s, mapped onto simulate.costs.Costs."""
    def p50(kind: str, key: str) -> float | None:
        value = (s.get(kind, {}).get(key) or {}).get("p50")
        return None if value is None else float(value)

    costs: dict[str, float] = {}
    requested, durable, evicted = (p50("notice", k) for k in ("requested_s", "durable_s", "evicted_s"))
    stopped = p50("notice", "doomed_stopped_s")
    if requested is not None:
        costs["operator_reaction_s"] = requested
        if durable is not None:
            costs["notice_checkpoint_s"] = max(0.0, durable - requested)
            if evicted is not None:
                costs["operator_poll_s"] = max(0.0, evicted - durable)
    if evicted is not None and stopped is not None:
        costs["stop_s"] = max(0.0, stopped - evicted)
    left, joined = p50("notice", "stop_and_rendezvous_s"), p50("join", "stop_and_rendezvous_s")
    if joined is not None:
        costs["rendezvous_s"] = max(0.0, joined - costs.get("stop_s", 0.0))
        if left is not None:
            costs["departed_peer_s"] = max(0.0, left - joined)
    import_s, group_s = p50("notice", "import_s"), p50("notice", "process_group_s")
    if import_s is not None and group_s is not None:
        costs["restart_s"] = import_s + group_s
    for key in ("restore", "first_step"):
        value = p50("notice", f"{key}_s")
        if value is not None:
            costs[f"{key}_s"] = value
    hard = p50("no_notice", "stop_and_rendezvous_s")
    if hard is not None and left is not None:
        costs["failure_detect_s"] = max(0.0, hard - left)
    noticed_join, started = p50("join", "last_old_step_after_s"), p50("join", "pod_started_s")
    if noticed_join is not None and started is not None:
        costs["join_detect_s"] = max(0.0, noticed_join - started)
    return {k: round(v, 3) for k, v in costs.items()}


def run(cluster: DevCluster, workdir: Path, repeats: int, rdzv_conf_extra: str) -> dict[str, Any]:
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core = client.CoreV1Api(api)
    namespace = "rescale-bench"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for("default ServiceAccount", lambda: core.list_namespaced_service_account(namespace).items)
    harness = Harness(cluster, namespace, api, NodeSimulator.from_kubeconfig(cluster.kubeconfig), workdir)
    port = free_port()
    moto = start_moto(port, workdir / "moto")
    endpoint = f"http://127.0.0.1:{port}"
    timeline = Timeline(workdir / "timeline.jsonl")
    runner = PodRunner(cluster.kubeconfig, workdir / "podrunner", (namespace,))
    bench = Bench(harness, runner, timeline)
    runner.on_event = bench.on_event
    runner.start()
    try:
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        core.create_namespaced_secret(namespace, {"metadata": {"name": "s3"}, "stringData": DUMMY_KEYS})
        spot = {zone: harness.add_node("spot-cpu", zone) for zone in ZONES}
        # Stable capacity in two zones: a store that moves goes to the other one.
        harness.wait_nodes_ready([*spot.values(), harness.add_node("on-demand", ZONES[0]),
                                  harness.add_node("on-demand", ZONES[1])])
        manifest = harness.job_manifest(min_nodes=2, max_nodes=3)
        del manifest["spec"]["fallback"]
        # No cooldown: a replacement may join in the zone just preempted (the bench measures the mechanics of a
        # join, not the placement policy that would wait 5 minutes).
        manifest["spec"]["placement"]["cooldown"] = "0s"
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        container["args"] = ["bench/rescale_train.py", "--timeline", str(timeline.path)]
        container["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}}
        if rdzv_conf_extra:
            container["env"] = [{"name": "SPOTRAIN_RDZV_CONF_EXTRA", "value": rdzv_conf_extra}]
        manifest["spec"]["checkpoint"] = {"uri": f"s3://{BUCKET}/job", "s3": {"endpointURL": endpoint,
                                                                              "credentialsSecret": "s3"}}
        harness.start_operator()
        harness.create_job(manifest)
        say("job created; waiting for three workers to train")
        bench.training_at(3)
        for i in range(repeats):
            say(f"repeat {i + 1}/{repeats}")
            zone = ZONES[i % len(ZONES)]
            bench.notice(spot[zone])
            spot[zone] = bench.join(zone)
            bench.training_at(3)
            zone = ZONES[(i + 1) % len(ZONES)]
            bench.no_notice(spot[zone])
            spot[zone] = bench.join(zone)
            bench.training_at(3)
            bench.rendezvous_loss()
            bench.training_at(3)
            bench.store_move()
            bench.training_at(3)
        status = harness.status()
    finally:
        runner.stop()
        moto.stop()
        harness.cleanup()
    result = summary(bench.samples)
    return {"benchmark": "rescale", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "repeats": repeats, "rdzv_conf_extra": rdzv_conf_extra, "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "phases": result,
            "simulator_costs": simulator_costs(result), "samples": bench.samples,
            "job_status": {k: status.get(k) for k in ("preemptions", "failures", "lostSteps")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=HERE / "results" / "rescale.json")
    p.add_argument("--rdzv-conf-extra", default="",
                   help="extra torchrun --rdzv-conf for the workers (SPOTRAIN_RDZV_CONF_EXTRA), e.g. "
                        "keep_alive_interval=1,keep_alive_max_attempt=3: what a faster rendezvous would buy")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="spotrain-rescale-"))
    cluster = DevCluster(workdir / "cluster")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cluster.start()
    try:
        report = run(cluster, workdir, args.repeats, args.rdzv_conf_extra)
    finally:
        cluster.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    phases = report["phases"]
    for kind, values in phases.items():
        line = ", ".join(f"{k} {v['p50']}/{v['p95']}" for k, v in values.items() if isinstance(v, dict))
        print(f"{kind} (n={values['n']}; p50/p95): {line}")
    print(f"simulator costs: {report['simulator_costs']}")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
