"""``make demo``: the quickstart job trains for real on the devcluster's simulated spot pools, loses a node to a
spot interruption notice and carries on.

    python -m spotrain_dev.demo [--steps 500] [--step-sleep 0.1] [--interrupt-at 100] [--timeout 900]

It reuses the devcluster of ``spotrain-dev up`` when one is running (else starts its own and stops it at the
end), starts a moto S3 server on 127.0.0.1:5005 (bucket ``spotrain-demo``, Secret ``demo-s3``), the operator
and the pod runner (which runs the KWOK pods' containers as processes here), applies ``examples/quickstart.yaml``
with fewer steps, injects an AWS Node Termination Handler spot interruption on one worker's node, narrates
what follows and prints a summary. Everything it started is stopped at the end, on Ctrl-C too. The exit status
is 0 only when the job Succeeded. Logs: ``.dev/demo/``.
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
from spotrain_dev.podrunner import PodRunner, RunnerEvent
from spotrain_dev.processes import ManagedProcess

CONTROL_PORT = 8470
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


def trainer_status(ip: str, port: int = CONTROL_PORT, timeout: float = 1.0) -> dict[str, Any] | None:
    """A worker's ``GET /status`` (None while its control server is not up)."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/status", timeout=timeout) as response:
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
    interrupt_at: int
    timeout: float
    scale_up_window: str = "60s"
    workdir: Path = DEMO_DIR
    kubeconfig: Path = Path()
    started: float = field(default_factory=time.monotonic)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    own_cluster: bool = False
    runner: PodRunner | None = None
    operator: ManagedProcess | None = None
    seen: set[str] = field(default_factory=set)
    runner_events: list[RunnerEvent] = field(default_factory=list)
    reclaimed: tuple[str, str] | None = None  # (pool, zone) of the node deleted after the interruption
    cost: tuple[int, dict[str, Any]] | None = None  # the job's last cost estimate while workers ran
    api_client: Any = None

    # -- plumbing --------------------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run([str(testbin.path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
                                input=input, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def once(self, key: str, message: str) -> None:
        if key not in self.seen:
            self.seen.add(key)
            say(message)

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
        self.runner_events.append(event)

    # -- the job ---------------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        manifest: dict[str, Any] = copy.deepcopy(yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text()))
        manifest["metadata"]["namespace"] = NAMESPACE
        spec = manifest["spec"]
        trainer = spec["template"]["spec"]["containers"][0]
        trainer["args"] = ["examples/train_tiny.py", "--steps", str(self.steps), "--step-sleep", str(self.step_sleep)]
        spec["elastic"]["maxNodes"] = 3  # three workers are what a 2-core machine runs comfortably
        # Joins are batched over this window; long enough here that the survivors are seen training on their own
        # before the replacement joins (torchrun's re-forming takes its last-call timeout, 30 s).
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

    def run(self) -> int:
        say(f"spotrain demo: {self.steps} steps of examples/train_tiny.py on simulated spot nodes, one spot "
            f"interruption at step {self.interrupt_at}")
        self.workdir.mkdir(parents=True, exist_ok=True)
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
        phase = self.follow(s3)
        self.summary(s3, phase)
        return 0 if phase == "Succeeded" else 1

    def nodes_table(self) -> str:
        from spotrain_dev.nodes import NodeSimulator

        rows = NodeSimulator.from_kubeconfig(self.kubeconfig).list()
        columns = ["name", "pool", "zone", "instance-type", "capacity", "ready", "taints"]
        widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
        lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
        lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
        return "\n".join(lines)

    def follow(self, s3: Any) -> str:
        """Watches the job until it finishes, showing what changes and injecting the interruption."""
        from spotrain_dev.nodes import NodeSimulator

        sim = NodeSimulator.from_kubeconfig(self.kubeconfig)
        last_stj = last_pods = ""
        last_progress = 0.0
        doomed: dict[str, Any] | None = None
        notice_at = 0.0
        notice_commit: dict[str, Any] | None = None
        event_uids: set[str] = set()
        request_id = ""
        before: set[str] = set()
        while True:
            self.check_deadline()
            if self.operator is not None and not self.operator.alive():
                raise RuntimeError(f"the operator exited; see {self.operator.log}")
            stj = self.kubectl("get", "stj", "-n", NAMESPACE, check=False)
            key = _without_ages(stj)
            if stj and key != last_stj:
                say("kubectl get stj\n" + indent(stj))
                last_stj = key
            workers = self.workers()
            pods = self.pods_table(workers)
            if pods != last_pods:
                say("worker pods\n" + indent(pods))
                last_pods = pods
            statuses = {w["metadata"]["name"]: trainer_status(w["status"]["podIP"]) for w in workers
                        if (w.get("status") or {}).get("podIP") and w["status"].get("phase") == "Running"}
            live = {k: v for k, v in statuses.items() if v and v.get("phase") in ("training", "checkpointing")}
            job = self.job()
            status = job.get("status") or {}
            phase = status.get("phase", "")
            if float((status.get("cost") or {}).get("hourly") or 0) > 0:
                self.cost = (int(status.get("readyWorkers") or 0), dict(status["cost"]))
            for event in self.events():
                uid = event["metadata"]["uid"]
                if uid in event_uids or (event.get("involvedObject") or {}).get("kind") != "SpotTrainingJob":
                    continue
                event_uids.add(uid)
                if event["reason"] in ("InterruptionNotice", "WorkerPreempted", "ScaleUp", "FallbackToOnDemand",
                                       "Succeeded", "Failed", "WaitingForCapacity", "RendezvousLost",
                                       "WorkerFailed"):
                    say(f"event {event['reason']}: {event['message']}")

            if time.monotonic() - last_progress > 5 and live:
                last_progress = time.monotonic()
                steps = sorted({int(s.get("step") or 0) for s in live.values()})
                world = sorted({int(s.get("world_size") or 0) for s in live.values()})
                rate = max(float(s.get("steps_per_second") or 0) for s in live.values())
                last = max((int((s.get("last_checkpoint") or {}).get("step", -1)) for s in live.values()), default=-1)
                say(f"training: step {steps[-1]}/{self.steps}, world size {world[-1]}, {rate:.1f} steps/s, "
                    f"last checkpoint: {'step ' + str(last) if last >= 0 else 'none yet'}")

            if doomed is None and live and max(int(s.get("step") or 0) for s in live.values()) >= self.interrupt_at:
                candidates = [w for w in workers if w["metadata"]["name"] in live
                              and not w["metadata"].get("deletionTimestamp")]
                if len(candidates) >= 2:
                    doomed = candidates[-1]
                    node = doomed["spec"]["nodeName"]
                    say(f">>> spot interruption: AWS Node Termination Handler taints node {node} "
                        f"(aws-node-termination-handler/spot-itn) and cordons it; the instance goes in 120 s. "
                        f"It runs worker {doomed['metadata']['name']}.")
                    sim.signal(node, "nth-spot-itn", lead_seconds=120)
                    notice_at = time.monotonic()
                    before = {w["metadata"]["name"] for w in workers}

            if doomed is not None:
                name = doomed["metadata"]["name"]
                node = doomed["spec"]["nodeName"]
                conditions = {c["type"]: c for c in status.get("conditions") or []}
                if conditions.get("Checkpointing", {}).get("status") == "True" or node in (status.get("drains") or {}):
                    self.once("notice", f"1. notice seen: the operator recognised the taint on {node} "
                              "(condition Checkpointing=True)")
                for s in statuses.values():
                    request = (s or {}).get("checkpoint_request") or {}
                    if request.get("id") and not request_id:
                        request_id = request["id"]
                        self.once("requested", f"2. checkpoint requested: POST /checkpoint to every worker "
                                  f"(request {request_id}, deadline {request.get('deadline')})")
                if notice_commit is None:
                    for marker in commits(s3, BUCKET, JOB):
                        if str(marker.get("reason", "")).startswith("notice"):
                            notice_commit = marker
                            self.once("requested", "2. checkpoint requested: POST /checkpoint to every worker "
                                      f"(request {marker.get('request_id')})")
                            self.once("durable", f"3. checkpoint durable in S3 {time.monotonic() - notice_at:.1f} s "
                                      f"after the notice: s3://{BUCKET}/{marker['key']} (step {marker['step']}, "
                                      f"world size {marker['world_size']}, {marker.get('total_bytes', 0)} bytes)")
                gone = any(e.pod == name and e.kind == "terminating" for e in self.runner_events)
                if gone:
                    self.once("evicted", f"4. doomed worker {name} evicted (Eviction API): its processes got "
                              "SIGTERM; the node is drained well before its deadline")
                    if "reclaimed" not in self.seen and not any(w["metadata"]["name"] == name for w in workers):
                        self.once("reclaimed", f"   the spot instance is reclaimed: node {node} is deleted")
                        sim.remove(node)
                        self.reclaimed = (doomed["metadata"]["labels"].get("spotrain.dev/pool", ""),
                                          doomed["metadata"]["annotations"].get("topology.kubernetes.io/zone", ""))
                if "evicted" in self.seen and live:
                    worlds = {int(s.get("world_size") or 0) for s in live.values()}
                    survivor_steps = [int(s.get("step") or 0) for s in live.values()]
                    if 2 in worlds and notice_commit and max(survivor_steps) > int(notice_commit["step"]):
                        self.once("survivors", f"5. survivors continue at world size 2 from the checkpoint "
                                  f"(step {notice_commit['step']}), now at step {max(survivor_steps)}")
                if "evicted" in self.seen:
                    for w in workers:
                        if w["metadata"]["name"] in before or not w["spec"].get("nodeName"):
                            continue
                        cooldowns = ", ".join(f"{k} until {v}" for k, v in (status.get("cooldowns") or {}).items())
                        self.once("replacement", f"6. replacement {w['metadata']['name']} placed on "
                                  f"{w['metadata']['labels'].get('spotrain.dev/pool')}/"
                                  f"{w['metadata']['annotations'].get('topology.kubernetes.io/zone')} "
                                  f"({w['spec']['nodeName']}); cooldown: {cooldowns or 'none'}")
                    if "replacement" in self.seen and 3 in {int(s.get("world_size") or 0) for s in live.values()}:
                        self.once("scaled-up", "   the replacement joined: world size back to 3")
            if phase in ("Succeeded", "Failed"):
                self.once("done", f"7. job {phase} after {self.elapsed()}")
                return str(phase)
            time.sleep(1.0)

    def pods_table(self, workers: list[dict[str, Any]]) -> str:
        rows = [["NAME", "PHASE", "NODE", "POD IP", "POOL/ZONE"]]
        for w in sorted(workers, key=lambda w: w["metadata"]["name"]):
            phase = (w.get("status") or {}).get("phase", "")
            if w["metadata"].get("deletionTimestamp"):
                phase = "Terminating"
            rows.append([w["metadata"]["name"], phase, w["spec"].get("nodeName") or "-",
                         (w.get("status") or {}).get("podIP") or "-",
                         f"{w['metadata']['labels'].get('spotrain.dev/pool')}/"
                         f"{w['metadata']['annotations'].get('topology.kubernetes.io/zone')}"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows)

    def summary(self, s3: Any, phase: str) -> None:
        status = self.job().get("status") or {}
        markers = commits(s3, BUCKET, JOB)
        kept = ", ".join(f"{m['key'].split('/')[-2]} ({m.get('reason')})" for m in markers)
        completed = object_exists(s3, BUCKET, f"{JOB}/COMPLETED")
        workers, cost = self.cost or (0, {})
        last = status.get("lastCheckpoint") or {}
        print(flush=True)
        say("summary")
        lines = [
            f"job phase            {phase}",
            f"preemptions          {status.get('preemptions', 0)}  {json.dumps(status.get('preemptionsByPool', {}))}",
            f"worker failures      {status.get('failures', 0)}",
            f"lost steps           {status.get('lostSteps', 0)}",
            f"last checkpoint      step {last.get('step', '-')}  {last.get('uri', '')}",
            f"checkpoints in S3    {kept}",
            f"completion marker    {'s3://' + BUCKET + '/' + JOB + '/COMPLETED' if completed else 'missing'}",
            f"cost                 ${cost.get('hourly', '?')}/h for {workers} spot workers vs "
            f"${cost.get('onDemandHourly', '?')}/h on-demand: {cost.get('savingPercent', '?')} % saved",
            f"wall time            {self.elapsed()}",
        ]
        print(indent("\n".join(lines)), flush=True)
        if not self.own_cluster:
            say(f"the job stays for inspection: kubectl --kubeconfig {self.kubeconfig} get stj -n {NAMESPACE}")
            reclaimed = self.reclaimed
            if reclaimed and reclaimed[0]:
                from spotrain_dev.nodes import NodeSimulator

                name = NodeSimulator.from_kubeconfig(self.kubeconfig).add(*reclaimed)
                say(f"added node {name} ({reclaimed[0]}/{reclaimed[1]}) in place of the reclaimed one, as Karpenter "
                    "would, so the next demo finds the same pools")


def _without_ages(table: str) -> str:
    """``kubectl get stj`` without its columns that change every second (checkpoint age, age)."""
    lines = table.splitlines()
    if not lines:
        return ""
    header = lines[0]
    cut = [header.find(c) for c in ("CHECKPOINT", "AGE")]
    if min(cut) < 0:
        return table
    return "\n".join(line[: min(cut)] for line in lines)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotrain_dev.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--step-sleep", type=float, default=0.1, help="seconds each step sleeps (pacing)")
    parser.add_argument("--interrupt-at", type=int, default=100, help="inject the interruption at this step")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    demo = Demo(args.steps, args.step_sleep, args.interrupt_at, args.timeout)
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
        say("done: the job trained through a spot interruption and Succeeded")
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
