"""``make demo``: the quickstart job trains for real on the devcluster's simulated spot pools through a sequence
of interruptions, and the demo reports what each one cost.

    python -m spotrain_dev.demo [--steps 4000] [--step-sleep 0.1] [--timeout 1500] [--only nth,gke,...]

It reuses the devcluster of ``spotrain-dev up`` when one is running (else starts its own and stops it at the
end), starts a moto S3 server on 127.0.0.1:5005 (bucket ``spotrain-demo``, Secret ``demo-s3``), the operator and
the pod runner (which runs the KWOK pods' containers as processes here), applies ``examples/quickstart.yaml``
and, each time the job trains again at full size, injects the next interruption:

1. ``nth``: an AWS Node Termination Handler spot-itn taint (120 s notice), the node reclaimed after the drain;
2. ``karpenter``: a Karpenter disruption (``karpenter.sh/disrupted``);
3. ``gke``: a GKE impending node termination (30 s notice: the node goes 30 s later, drained or not);
4. ``zone``: a zone-wide burst: every spot node of one zone gets a spot-itn notice at once;
5. ``hard``: a node lost without notice: its worker's processes SIGKILLed and the Node deleted.

Reclaimed capacity comes back (a new node in the same pool and zone, as Karpenter would launch) a little later.
Progress shows live (world size, step, last checkpoint, events). The report gives, per interruption, the steps
lost and the time until training resumed, the run's goodput (committed useful node-seconds / paid
node-seconds), its cost against an on-demand run of the same work, and ``.dev/demo/demo.png`` (step over time,
world size, interruptions marked). Exit status 0 only when the job Succeeded and no interruption that came with
a notice lost a step. Everything it started is stopped at the end, on Ctrl-C too. Logs: ``.dev/demo/``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spotrain_dev import processes, testbin
from spotrain_dev.cluster import REPO, DevCluster
from spotrain_dev.podrunner import HARD_KILL_SIGNAL, PodRunner, RunnerEvent
from spotrain_dev.processes import ManagedProcess
from spotrain_protocol.constants import CONTROL_PORT, STATUS_PATH, authorization

DEMO_DIR = REPO / ".dev" / "demo"
NAMESPACE = "spotrain-demo"
JOB = "quickstart"
BUCKET = "spotrain-demo"
SECRET = "demo-s3"
MOTO_PORT = 5005
DUMMY_KEYS = {"AWS_ACCESS_KEY_ID": "spotrain-demo", "AWS_SECRET_ACCESS_KEY": "spotrain-demo-secret"}
GROUP, VERSION, PLURAL = "spotrain.dev", "v1alpha1", "spotrainingjobs"


# -- pieces the end-to-end test shares ------------------------------------------------------------------------


def moto_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe), "-H", host, "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def start_moto(port: int, log_dir: Path, timeout: float = 60.0) -> ManagedProcess:
    """A moto S3 server on 127.0.0.1:``port`` that dies with this process."""
    process = processes.start("moto", moto_argv(port), log_dir)

    def ready() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/moto-api/")
            return conn.getresponse().status < 500
        finally:
            conn.close()

    processes.wait_until(f"moto S3 server on 127.0.0.1:{port}", ready, [process], timeout)
    return process


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=DUMMY_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"])


def commits(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The committed checkpoints under ``s3://bucket/prefix``: each COMMIT marker's JSON plus its ``key``."""
    found = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/COMMIT"):
                with contextlib.suppress(Exception):
                    marker = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
                    found.append({**marker, "key": obj["Key"]})
    return sorted(found, key=lambda m: int(m.get("step", 0)))


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception:
        return False


def trainer_status(ip: str, port: int = CONTROL_PORT, timeout: float = 1.0,
                   token: str | None = None) -> dict[str, Any] | None:
    """A worker's ``GET /status`` (None while its control server is not up, or refuses without the job's
    control ``token``)."""
    try:
        request = urllib.request.Request(f"http://{ip}:{port}{STATUS_PATH}", headers=authorization(token))
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return dict(json.loads(response.read()))
    except (OSError, ValueError):
        return None


# -- the demo ------------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())


class Interrupted(Exception):
    pass


@dataclass
class Demo:
    steps: int
    step_sleep: float
    timeout: float
    sequence: tuple[str, ...] = ("nth", "karpenter", "gke", "zone", "hard")
    scale_up_window: str = "10s"
    workdir: Path = DEMO_DIR
    kubeconfig: Path = Path()
    started: float = field(default_factory=time.monotonic)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    own_cluster: bool = False
    runner: PodRunner | None = None
    operator: ManagedProcess | None = None
    runner_times: list[tuple[float, RunnerEvent]] = field(default_factory=list)  # (time.time(), event)
    interruptions: list[Interruption] = field(default_factory=list)
    returns: list[tuple[float, str, str]] = field(default_factory=list)  # (when, pool, zone) capacity comes back
    added_nodes: list[str] = field(default_factory=list)
    pod_pools: dict[str, str] = field(default_factory=dict)  # worker pod -> its pool (for the cost)
    removed: list[tuple[str, str]] = field(default_factory=list)  # (pool, zone) of reclaimed devcluster nodes
    api_client: Any = None

    # -- plumbing --------------------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run([str(testbin.path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
                                input=input, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.0f} s"

    def check_deadline(self) -> None:
        if time.monotonic() - self.started > self.timeout:
            raise TimeoutError(f"the demo did not finish within {self.timeout:.0f} s")

    # -- set-up ----------------------------------------------------------------------------------------------

    def start_cluster(self) -> None:
        from spotrain_dev import cli

        if cli._supervisor_pid() and cli.READY.exists() and cli.KUBECONFIG.exists():
            self.kubeconfig = cli.KUBECONFIG
            say(f"devcluster: reusing the one `spotrain-dev up` runs ({self.kubeconfig})")
            return
        say("devcluster: none running (`make dev-up` keeps one); starting one for the demo")
        cluster = DevCluster(self.workdir / "cluster", progress=lambda m: say(f"devcluster: {m}"))
        self.stack.callback(self._stop_cluster, cluster)
        cluster.start()
        self.own_cluster = True
        self.kubeconfig = cluster.kubeconfig

    def _stop_cluster(self, cluster: DevCluster) -> None:
        say("stopping the demo's devcluster")
        cluster.stop()

    def api(self) -> Any:
        from kubernetes import config

        if self.api_client is None:
            self.api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self.api_client

    def prepare_namespace(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api())
        custom = client.CustomObjectsApi(self.api())
        if not core.list_namespace(field_selector=f"metadata.name={NAMESPACE}").items:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        else:
            jobs = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
            if jobs:
                say(f"removing {len(jobs)} job(s) left in namespace {NAMESPACE} by an earlier demo")
                for job in jobs:
                    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, job["metadata"]["name"])
            self.wait("the earlier demo's pods to go", lambda: not core.list_namespaced_pod(NAMESPACE).items
                      and not custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"], 120)
        self.wait("the namespace's default ServiceAccount", lambda: core.list_namespaced_service_account(
            NAMESPACE, field_selector="metadata.name=default").items, 60)
        secret = client.V1Secret(metadata=client.V1ObjectMeta(name=SECRET), string_data=DUMMY_KEYS)
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_secret(SECRET, NAMESPACE)
        core.create_namespaced_secret(NAMESPACE, secret)

    def wait(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    def start_s3(self) -> Any:
        if not port_free(MOTO_PORT):
            raise RuntimeError(f"127.0.0.1:{MOTO_PORT} is in use; the demo's S3 (moto) needs it "
                               "(examples/quickstart.yaml points there)")
        moto = start_moto(MOTO_PORT, self.workdir / "logs")
        self.stack.callback(moto.stop)
        s3 = s3_client(f"http://127.0.0.1:{MOTO_PORT}")
        s3.create_bucket(Bucket=BUCKET)
        say(f"S3: moto on 127.0.0.1:{MOTO_PORT}, bucket s3://{BUCKET}, Secret {NAMESPACE}/{SECRET} (dummy keys)")
        return s3

    def start_operator(self) -> None:
        operator = processes.start("operator", [
            sys.executable, "-m", "spotrain_operator.main", "--kubeconfig", str(self.kubeconfig),
            "--namespace", NAMESPACE, "--metrics-port", "0", "--health-port", "0", "--resync", "2"],
            self.workdir / "logs")
        self.stack.callback(operator.stop)
        self.operator = operator
        say(f"operator: pid {operator.popen.pid} watching namespace {NAMESPACE} (log: {operator.log})")

    def start_runner(self) -> None:
        runner = PodRunner(self.kubeconfig, self.workdir / "podrunner", (NAMESPACE,), on_event=self.on_runner_event)
        runner.start()
        self.stack.callback(runner.stop)
        self.runner = runner
        say(f"pod runner: runs the KWOK pods' containers here (log: {runner.workdir / 'podrunner.log'})")

    def on_runner_event(self, event: RunnerEvent) -> None:
        if event.kind in ("started", "terminating", "killed", "exited"):
            detail = event.detail.split(": ", 1)[0] if event.kind == "started" else event.detail
            print(f"    pod runner: {event.pod} {event.kind}: {detail}", flush=True)
        self.runner_times.append((time.time(), event))

    # -- the job ---------------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        manifest: dict[str, Any] = copy.deepcopy(yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text()))
        manifest["metadata"]["namespace"] = NAMESPACE
        spec = manifest["spec"]
        trainer = spec["template"]["spec"]["containers"][0]
        trainer["args"] = ["examples/train_tiny.py", "--steps", str(self.steps), "--step-sleep", str(self.step_sleep),
                           "--loss-log", str(self.loss_log)]
        spec["elastic"]["maxNodes"] = 3  # three workers are what a 2-core machine runs comfortably
        # Joins are batched over this window: the survivors are seen training on their own before a replacement joins.
        spec["elastic"]["scaleUpWindow"] = self.scale_up_window
        spec["checkpoint"]["minInterval"] = "20s"  # so that "auto" takes regular checkpoints in a short demo
        return manifest

    def job(self) -> dict[str, Any]:
        from kubernetes import client

        obj: dict[str, Any] = client.CustomObjectsApi(self.api()).get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, JOB)
        return obj

    def workers(self) -> list[dict[str, Any]]:
        from kubernetes import client

        response = client.CoreV1Api(self.api()).list_namespaced_pod(
            NAMESPACE, label_selector=f"spotrain.dev/job={JOB},spotrain.dev/role=worker", _preload_content=False)
        return list(json.loads(response.data)["items"])

    def events(self) -> Iterator[dict[str, Any]]:
        from kubernetes import client

        response = client.CoreV1Api(self.api()).list_namespaced_event(NAMESPACE, _preload_content=False)
        items = json.loads(response.data)["items"]
        yield from sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    # -- run -------------------------------------------------------------------------------------------------

    @property
    def loss_log(self) -> Path:
        return self.workdir / "loss.jsonl"

    def run(self) -> int:
        say(f"spotrain demo: {self.steps} steps of examples/train_tiny.py on simulated spot nodes through "
            f"{len(self.sequence)} interruptions: {', '.join(KINDS[k].title for k in self.sequence)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.loss_log.unlink(missing_ok=True)
        self.start_cluster()
        self.prepare_namespace()
        s3 = self.start_s3()
        self.start_operator()
        self.start_runner()
        say("the simulated node pools (spotrain-dev nodes):")
        print(indent(self.nodes_table()), flush=True)
        say(f"kubectl apply -f examples/quickstart.yaml  (namespace {NAMESPACE}; demo overrides: "
            f"--steps {self.steps} --step-sleep {self.step_sleep}, maxNodes 3, scaleUpWindow {self.scale_up_window}, "
            "minInterval 20s)")
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(self.manifest()))
        phase = self.follow()
        report = self.report(s3, phase)
        lost_with_notice = [i for i in self.interruptions if i.notice and (i.steps_lost or 0) > 0]
        if lost_with_notice:
            say("FAILED: an interruption with notice lost steps: " + ", ".join(i.title for i in lost_with_notice))
        if len(self.interruptions) < len(self.sequence):
            say(f"note: training finished after {len(self.interruptions)} of {len(self.sequence)} interruptions "
                "(more --steps leave room for all)")
        (self.workdir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        return 0 if phase == "Succeeded" and not lost_with_notice else 1

    def nodes_table(self) -> str:
        from spotrain_dev.nodes import NodeSimulator

        rows = NodeSimulator.from_kubeconfig(self.kubeconfig).list()
        columns = ["name", "pool", "zone", "instance-type", "capacity", "ready", "taints"]
        widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
        lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
        lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
        return "\n".join(lines)

    def log(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.loss_log)

    def follow(self) -> str:
        """Watches the job until it finishes: live progress, events, the interruptions and their outcome."""
        from spotrain_dev.nodes import NodeSimulator

        sim = NodeSimulator.from_kubeconfig(self.kubeconfig)
        last_progress = 0.0
        event_uids: set[str] = set()
        pending = list(self.sequence)
        stable_since: float | None = None
        while True:
            self.check_deadline()
            if self.operator is not None and not self.operator.alive():
                raise RuntimeError(f"the operator exited; see {self.operator.log}")
            workers = self.workers()
            for w in workers:
                self.pod_pools[w["metadata"]["name"]] = w["metadata"]["labels"].get("spotrain.dev/pool", "")
            status = self.job().get("status") or {}
            phase = status.get("phase", "")
            for event in self.events():
                uid = event["metadata"]["uid"]
                if uid in event_uids or (event.get("involvedObject") or {}).get("kind") != "SpotTrainingJob":
                    continue
                event_uids.add(uid)
                if event["reason"] in ("InterruptionNotice", "WorkerPreempted", "ScaleUp", "FallbackToOnDemand",
                                       "ReturnToSpot", "Succeeded", "Failed", "WaitingForCapacity",
                                       "RendezvousLost", "WorkerFailed"):
                    say(f"event {event['reason']}: {event['message']}")
            log = self.log()
            steps = [r for r in log if "loss" in r]
            world = steps[-1]["world_size"] if steps else 0
            if time.monotonic() - last_progress > 5 and steps:
                last_progress = time.monotonic()
                last = status.get("lastCheckpoint") or {}
                say(f"progress: step {steps[-1]['step']}/{self.steps}, world size {world}, last checkpoint "
                    f"{'step ' + str(last['step']) if 'step' in last else 'none yet'}, phase {phase}, "
                    f"preemptions {status.get('preemptions', 0)}")
            self.update_interruptions(log, sim)
            self.return_capacity(sim)
            full = world == 3 and len([w for w in workers if (w.get("status") or {}).get("phase") == "Running"
                                       and not w["metadata"].get("deletionTimestamp")]) == 3
            settled = not any(i.resumed_at is None or not i.done for i in self.interruptions)
            stable_since = (stable_since or time.monotonic()) if full and settled else None
            if pending and stable_since and time.monotonic() - stable_since > 10 and steps:
                self.interrupt(pending.pop(0), workers, sim, log)
                stable_since = None
            if phase in ("Succeeded", "Failed"):
                say(f"job {phase} after {self.elapsed()}")
                return str(phase)
            time.sleep(1.0)

    # -- interruptions -----------------------------------------------------------------------------------------

    def interrupt(self, kind: str, workers: list[dict[str, Any]], sim: Any, log: list[dict[str, Any]]) -> None:
        spec = KINDS[kind]
        running = [w for w in workers if (w.get("status") or {}).get("phase") == "Running"
                   and not w["metadata"].get("deletionTimestamp") and w["spec"].get("nodeName")]
        preferred = [w for w in running if w["metadata"]["labels"].get("spotrain.dev/pool") == spec.pool]
        victim = (preferred or running)[-1]
        node = victim["spec"]["nodeName"]
        zone = victim["metadata"]["annotations"].get("topology.kubernetes.io/zone", "")
        nodes = [node]
        if kind == "zone":
            nodes = [r["name"] for r in sim.list() if r["zone"] == zone and r["capacity"] == "spot"
                     and r["ready"] == "Ready"]
        at = time.time()
        interruption = Interruption(kind, spec.title, at, spec.notice_s, nodes, log_offset=len(log))
        hit = {w["metadata"]["name"]: w["spec"]["nodeName"] for w in running if w["spec"]["nodeName"] in nodes}
        interruption.pods = hit
        interruption.node_pools = {n: self.node_pool_zone(sim, n) for n in nodes}
        self.interruptions.append(interruption)
        say(f">>> interruption {len(self.interruptions)}/{len(self.sequence)}: {spec.title} on "
            f"{', '.join(nodes)} (worker{'s' if len(hit) != 1 else ''} {', '.join(hit) or 'none'}); {spec.says}")
        if kind == "hard":
            self.kill_pod_processes(victim["metadata"]["name"])
            for n in nodes:
                self.reclaim(sim, n, interruption)
            return
        for n in nodes:
            sim.signal(n, spec.signal, lead_seconds=int(spec.notice_s))

    def node_pool_zone(self, sim: Any, node: str) -> tuple[str, str]:
        row: dict[str, str] = next((r for r in sim.list() if r["name"] == node), {})
        return row.get("pool", ""), row.get("zone", "")

    def kill_pod_processes(self, pod: str) -> None:
        """An instance that vanishes takes its processes with it, without SIGTERM: the runner's hard kill."""
        assert self.runner is not None
        for container in list(self.runner._containers.values()):
            if container.pod == pod:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(container.popen.pid, HARD_KILL_SIGNAL)

    def reclaim(self, sim: Any, node: str, interruption: Interruption) -> None:
        pool, zone = interruption.node_pools.get(node, ("", ""))
        sim.remove(node)
        interruption.reclaimed.add(node)
        self.removed.append((pool, zone))
        # Capacity comes back as a new node (Karpenter launching one); a zone burst's a little later.
        self.returns.append((time.monotonic() + (90 if interruption.kind == "zone" else 20), pool, zone))

    def return_capacity(self, sim: Any) -> None:
        now = time.monotonic()
        for item in [r for r in self.returns if r[0] <= now]:
            self.returns.remove(item)
            _, pool, zone = item
            if pool:
                name = sim.add(pool, zone)
                self.added_nodes.append(name)
                say(f"capacity back: new node {name} ({pool}/{zone})")

    def update_interruptions(self, log: list[dict[str, Any]], sim: Any) -> None:
        now = time.time()
        for i in self.interruptions:
            if i.done:
                continue
            # The node goes when its workers are gone (drained) or at the notice's deadline, whichever first.
            gone = all(any(e.pod == pod and e.kind in ("exited", "killed") and t >= i.at for t, e in self.runner_times)
                       for pod in i.pods)
            for n in i.nodes:
                if n not in i.reclaimed and (gone or now >= i.at + i.notice_s):
                    self.reclaim(sim, n, i)
            after = log[i.log_offset:]
            start = next((k for k, r in enumerate(after) if r.get("event") == "start"), None)
            if start is None:
                if not i.pods and len(i.reclaimed) == len(i.nodes):
                    i.resumed_at, i.steps_lost, i.done = i.at, 0, True  # nothing of the job was hit
                continue
            restored = after[start]["step"]
            before = [r for r in log[: i.log_offset + start] if "loss" in r]
            i.last_step = before[-1]["step"] if before else None
            i.restored_step = restored
            i.steps_lost = max(0, (i.last_step + 1 if i.last_step is not None else 0) - restored)
            first = next((r for r in after[start:] if "loss" in r), None)
            if first is not None:
                i.resumed_at = first["time"]
                i.world_after = first["world_size"]
                i.done = len(i.reclaimed) == len(i.nodes)
                if not i.reported:
                    i.reported = True
                    say(f"<<< {i.title}: training resumed at world size {i.world_after} after "
                        f"{i.resumed_at - i.at:.1f} s from step {restored}; steps lost: {i.steps_lost}")

    # -- the report ------------------------------------------------------------------------------------------

    def report(self, s3: Any, phase: str) -> dict[str, Any]:
        status = self.job().get("status") or {}
        log = self.log()
        useful, kept = committed_work(log)
        paid, cost, on_demand_price = self.paid()
        goodput = useful / paid if paid else 0.0
        on_demand_cost = useful / 3600.0 * on_demand_price
        rows = [["#", "interruption", "notice", "nodes", "workers hit", "resumed after", "world", "steps lost"]]
        for n, i in enumerate(self.interruptions, start=1):
            rows.append([str(n), i.title, f"{i.notice_s:.0f} s" if i.notice else "none", str(len(i.nodes)),
                         str(len(i.pods)), "-" if i.resumed_at is None else f"{i.resumed_at - i.at:.1f} s",
                         str(i.world_after or "-"), "-" if i.steps_lost is None else str(i.steps_lost)])
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        table = "\n".join("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)) for r in rows)
        last = status.get("lastCheckpoint") or {}
        print(flush=True)
        say("report")
        print(indent(table), flush=True)
        lines = [
            f"job phase            {phase} (step {kept} of {self.steps} committed; last checkpoint step "
            f"{last.get('step', '-')})",
            f"preemptions          {status.get('preemptions', 0)}  {json.dumps(status.get('preemptionsByPool', {}))}",
            f"operator lost steps  {status.get('lostSteps', 0)} (steps a drain evicted before they were durable)",
            f"goodput              {goodput:.3f} (committed useful node-seconds {useful:.0f} / paid {paid:.0f})",
            f"cost                 ${cost:.4f} for this run vs ${on_demand_cost:.4f} on-demand for the same work "
            f"({cost / on_demand_cost if on_demand_cost else 0:.2f}x)",
            f"checkpoints in S3    {len(commits(s3, BUCKET, JOB))} kept; completion marker "
            f"{'present' if object_exists(s3, BUCKET, f'{JOB}/COMPLETED') else 'missing'}",
            f"wall time            {self.elapsed()}",
        ]
        print(indent("\n".join(lines)), flush=True)
        plot = self.plot(log)
        if plot:
            say(f"plot: {plot}")
        if not self.own_cluster:
            self.restore_topology()
        return {"phase": phase, "goodput": goodput, "cost": cost, "on_demand_cost": on_demand_cost,
                "useful_node_s": useful, "paid_node_s": paid, "status": {k: status.get(k) for k in (
                    "preemptions", "failures", "lostSteps", "lastCheckpoint")},
                "interruptions": [i.to_json() for i in self.interruptions]}

    def paid(self) -> tuple[float, float, float]:
        """Node-seconds the workers ran (pod runner start -> exit), their cost at the pools' prices, and the
        on-demand hourly price."""
        spec = self.manifest()["spec"]
        prices = {p["name"]: float(p.get("hourlyPrice", 0)) for p in spec["placement"]["pools"]}
        on_demand = max((float(p.get("onDemandHourlyPrice", 0)) for p in spec["placement"]["pools"]), default=0.0)
        started: dict[str, float] = {}
        seconds: dict[str, float] = {}
        end = time.time()
        for t, e in self.runner_times:
            if not e.pod.startswith(f"{JOB}-worker-"):
                continue
            if e.kind == "started":
                started[e.pod] = t
            elif e.kind in ("exited", "killed") and e.pod in started:
                seconds[e.pod] = t - started.pop(e.pod)
        for pod, t in started.items():
            seconds[pod] = end - t
        total = sum(seconds.values())
        cost = sum(s / 3600.0 * prices.get(self.pod_pools.get(pod, ""), 0.0) for pod, s in seconds.items())
        return total, cost, on_demand

    def plot(self, log: list[dict[str, Any]]) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        steps = [r for r in log if "loss" in r]
        if not steps:
            return None
        t0 = steps[0]["time"]
        fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=[3, 1])
        top.plot([r["time"] - t0 for r in steps], [r["step"] for r in steps], ".", markersize=2)
        top.set_ylabel("step")
        times, worlds = [], []
        for previous, r in zip([None, *steps], steps, strict=False):
            if previous is not None and r["time"] - previous["time"] > 1.0:  # no step for a while: not training
                times.append(previous["time"] - t0 + 0.5)
                worlds.append(0)
            times.append(r["time"] - t0)
            worlds.append(r["world_size"])
        bottom.step(times, worlds, where="post")
        bottom.set_ylabel("world size")
        bottom.set_xlabel("seconds")
        bottom.set_ylim(0, 4)
        for n, i in enumerate(self.interruptions, start=1):
            for ax in (top, bottom):
                ax.axvline(i.at - t0, color="red" if not i.notice else "orange", linestyle="--", linewidth=0.8)
            top.annotate(f"{n}. {i.kind}", (i.at - t0, top.get_ylim()[1]), rotation=90, va="top", fontsize=8)
        top.set_title("spotrain demo: training through interruptions")
        fig.tight_layout()
        path = self.workdir / "demo.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def restore_topology(self) -> None:
        """A reused devcluster gets its pools back: nodes added by the demo go, one per reclaimed node comes back."""
        from spotrain_dev.nodes import NodeSimulator

        sim = NodeSimulator.from_kubeconfig(self.kubeconfig)
        for name in self.added_nodes:
            sim.remove(name)
        for pool, zone in self.removed:
            if pool:
                sim.add(pool, zone)
        say(f"the job stays for inspection: kubectl --kubeconfig {self.kubeconfig} get stj -n {NAMESPACE}; "
            "the devcluster's nodes are as before the demo")


@dataclass(frozen=True)
class Kind:
    title: str
    signal: str
    notice_s: float
    pool: str  # the pool whose node it prefers
    says: str


KINDS = {
    "nth": Kind("AWS NTH spot interruption", "nth-spot-itn", 120, "spot-cpu",
                "the AWS Node Termination Handler taints the node (spot-itn) and cordons it; the instance goes in "
                "120 s"),
    "karpenter": Kind("Karpenter disruption", "karpenter", 120, "spot-cpu",
                      "Karpenter taints the node karpenter.sh/disrupted:NoSchedule (it would drain it next)"),
    "gke": Kind("GKE impending termination", "gke-impending", 30, "gke-spot",
                "GKE's termination handler taints the node; the VM is preempted 30 s later"),
    "zone": Kind("zone-wide burst", "nth-spot-itn", 120, "spot-cpu",
                 "every spot node of the zone gets a spot interruption notice at once"),
    "hard": Kind("node lost without notice", "delete", 0, "spot-cpu",
                 "the instance vanishes: its processes die at once, the Node object is deleted"),
}


@dataclass
class Interruption:
    kind: str
    title: str
    at: float
    notice_s: float
    nodes: list[str]
    log_offset: int
    pods: dict[str, str] = field(default_factory=dict)
    node_pools: dict[str, tuple[str, str]] = field(default_factory=dict)
    reclaimed: set[str] = field(default_factory=set)
    resumed_at: float | None = None
    world_after: int | None = None
    last_step: int | None = None
    restored_step: int | None = None
    steps_lost: int | None = None
    done: bool = False
    reported: bool = False

    @property
    def notice(self) -> bool:
        return self.notice_s > 0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "notice_s": self.notice_s, "nodes": self.nodes, "workers": sorted(self.pods),
                "resumed_after_s": None if self.resumed_at is None else round(self.resumed_at - self.at, 2),
                "world_after": self.world_after, "last_step": self.last_step, "restored_step": self.restored_step,
                "steps_lost": self.steps_lost}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def committed_work(log: list[dict[str, Any]]) -> tuple[float, int]:
    """Useful node-seconds that ended up committed: each step's duration times its world size, for the steps no
    restart rolled back (a restart from step s discards the earlier generation's steps >= s; the first step of
    each generation has no measured duration and is left out). And the number of steps committed."""
    kept: dict[int, float] = {}
    previous: dict[str, Any] | None = None
    for r in log:
        if r.get("event") == "start":
            for step in [s for s in kept if s >= r["step"]]:
                del kept[step]
            previous = None
        elif "loss" in r:
            if previous is not None:
                kept[r["step"]] = (r["time"] - previous["time"]) * r["world_size"]
            previous = r
    return sum(kept.values()), max(kept, default=0) + 1 if kept else 0


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotrain_dev.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--step-sleep", type=float, default=0.1, help="seconds each step sleeps (pacing)")
    parser.add_argument("--only", type=lambda s: tuple(s.split(",")), default=tuple(KINDS),
                        help=f"the interruptions, in order (default: {','.join(KINDS)})")
    parser.add_argument("--timeout", type=float, default=1500)
    args = parser.parse_args(argv)
    unknown = [k for k in args.only if k not in KINDS]
    if unknown:
        parser.error(f"--only: unknown interruption(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    demo = Demo(args.steps, args.step_sleep, args.timeout, sequence=args.only)
    code = 1
    try:
        code = demo.run()
    except (KeyboardInterrupt, Interrupted):
        say("interrupted")
        code = 130
    except Exception as exc:
        say(f"demo failed: {exc}")
        code = 1
    finally:
        # Cleaning up must not be cut short by a second Ctrl-C (a kill -9 still takes every child with it).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping everything the demo started")
        demo.stack.close()
    if code != 0:
        say(f"logs: {DEMO_DIR / 'logs'} (operator, moto), {DEMO_DIR / 'podrunner'} (pods and pod runner)")
    if code == 0:
        say("done: the job trained through every interruption and Succeeded; no noticed interruption lost a step")
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
