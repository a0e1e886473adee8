"""The runner: watches the devcluster's spotrain pods, starts their containers (under the shim) once Running with
an IP, stops them as kubelet does when the pods go, and reports how they ended in the pod status."""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotrain_dev.podrunner.commands import (
    TERMINATION_MESSAGE_FILE,
    Command,
    Host,
    rendezvous_command,
    rendezvous_service,
    store_candidates,
    worker_command,
)
from spotrain_dev.podrunner.environment import NamespaceObjects, WaitingError, container_env, referenced_objects
from spotrain_dev.podrunner.shim import HARD_KILL_SIGNAL, PARENT_ENV, kill_descendants, shim_main
from spotrain_dev.timestamps import rfc3339, utc_now
from spotrain_protocol import envvars

if TYPE_CHECKING:
    from kubernetes import client

REPO = Path(__file__).resolve().parents[3]
JOB_LABEL = "spotrain.dev/job"  # = spotrain_operator.wellknown.JOB_LABEL (not imported: the shim imports no kopf)
ROLE_LABEL = "spotrain.dev/role"
RUNNER_ID_ENV = "SPOTRAIN_PODRUNNER_ID"  # in every container's environment: finds leftovers, like a cgroup
POD_UID_ENV = "SPOTRAIN_PODRUNNER_POD_UID"
MIN_GRACE_SECONDS = 2.0  # kubelet's minimumGracePeriodInSeconds
DEFAULT_GRACE_SECONDS = 30.0  # the API's default terminationGracePeriodSeconds
MAX_MESSAGE_BYTES = 4096  # kubelet's limit on a container's termination message
FALLBACK_LOG_LINES = 80  # terminationMessagePolicy FallbackToLogsOnError: kubelet's tail

# -- the runner --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerEvent:
    """One thing the runner did: ``started``, ``waiting`` (cannot start yet: why), ``terminating`` (the pod was
    deleted; reported before SIGTERM is sent), ``killed`` (SIGKILL after the grace period), ``exited``,
    ``reported`` (pod status patched), ``error``."""

    time: float
    namespace: str
    pod: str
    kind: str
    detail: str
    exit_code: int | None = None


@dataclass
class _Container:
    uid: str
    namespace: str
    pod: str
    role: str
    container: str
    image: str
    popen: subprocess.Popen[bytes]
    log: Path
    termination_log: Path
    message_policy: str
    spec_grace: float
    started_at: datetime.datetime
    started_mono: float
    term_sent: float | None = None
    kill_at: float | None = None
    hard_sent: float | None = None
    exit_code: int | None = None
    finished_at: datetime.datetime | None = None
    reported: bool = False
    pod_gone: bool = False


@dataclass
class PodRunner:
    kubeconfig: Path
    workdir: Path
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    on_event: Callable[[RunnerEvent], None] | None = None
    echo: bool = False  # also print the log lines to stderr
    python: str = sys.executable
    interval: float = 0.5
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    events: list[RunnerEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> latest object
        self._vanished: dict[str, dict[str, Any]] = {}  # uid -> last object, not yet handled by the loop
        self._deletion_grace: dict[str, float] = {}  # uid -> grace of the first deletion the watch showed
        self._containers: dict[str, _Container] = {}  # uid -> container (loop thread only)
        self._done: set[str] = set()  # uids whose container ran and must not run again
        self._waiting: dict[str, str] = {}  # uid -> why it cannot start (logged once)
        self._loop_thread: threading.Thread | None = None
        self._watch_thread: threading.Thread | None = None
        self._log_file: Any = None
        self._api: client.ApiClient | None = None
        self._stop_grace = 5.0
        self.synced = threading.Event()  # set once the first list has been read

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        from kubernetes import config

        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log_file = (self.workdir / "podrunner.log").open("a", buffering=1)
        self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self._log("-", "-", "runner", f"pod runner {self.id} started (namespaces: "
                  f"{', '.join(self.namespaces) or 'all'}; workdir {self.workdir})", record=False)
        self._watch_thread = threading.Thread(target=self._watch_loop, name="podrunner-watch", daemon=True)
        self._watch_thread.start()
        # This thread starts every container and outlives them all: PR_SET_PDEATHSIG fires when it ends.
        self._loop_thread = threading.Thread(target=self._run_loop, name="podrunner", daemon=True)
        self._loop_thread.start()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to every container still running, SIGKILL to what is left after ``grace`` seconds."""
        self._stop_grace = grace
        self._stopping.set()
        self._wake.set()
        if self._loop_thread is not None:
            self._loop_thread.join()
            self._loop_thread = None
        if self._log_file is not None:
            self._log("-", "-", "runner", f"pod runner {self.id} stopped", record=False)
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> PodRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries -----------------------------------------------------------------------------------------------

    def running(self) -> list[str]:
        """``namespace/pod`` of every container whose process tree is still alive."""
        with self._lock:
            containers = list(self._containers.values())
        return sorted(f"{c.namespace}/{c.pod}" for c in containers if c.popen.poll() is None)

    def leftover_pids(self) -> list[int]:
        """Every process on this machine that any of this runner's containers started and that is still alive
        (found by the runner id in its environment, the way a cgroup would list it)."""
        marker = f"{RUNNER_ID_ENV}={self.id}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in env and state != b"Z":
                found.append(int(entry))
        return sorted(found)

    def pod_log(self, namespace: str, pod: str) -> Path:
        return self.workdir / "pods" / namespace / f"{pod}.log"

    # -- logging -----------------------------------------------------------------------------------------------

    def _log(self, namespace: str, pod: str, kind: str, detail: str, exit_code: int | None = None,
             record: bool = True) -> None:
        line = f"{time.strftime('%H:%M:%S')} {namespace}/{pod} {kind}: {detail}"
        if self._log_file is not None:
            self._log_file.write(line + "\n")
        if self.echo:
            print(f"[podrunner] {line}", file=sys.stderr, flush=True)
        if not record:
            return
        event = RunnerEvent(time.time(), namespace, pod, kind, detail, exit_code)
        with self._lock:
            self.events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:  # a broken observer must not stop the kubelet
                if self._log_file is not None:
                    self._log_file.write(f"on_event raised {exc!r}\n")

    # -- the API side: list + watch ------------------------------------------------------------------------

    @property
    def core(self) -> client.CoreV1Api:
        from kubernetes import client

        return client.CoreV1Api(self._api)

    def _list(self) -> tuple[dict[str, dict[str, Any]], str]:
        pods: dict[str, dict[str, Any]] = {}
        versions = []
        for ns in self.namespaces or (None,):
            if ns is None:
                response = self.core.list_pod_for_all_namespaces(label_selector=JOB_LABEL, _preload_content=False)
            else:
                response = self.core.list_namespaced_pod(ns, label_selector=JOB_LABEL, _preload_content=False)
            body = json.loads(response.data)
            versions.append(body["metadata"]["resourceVersion"])
            for item in body["items"]:
                pods[item["metadata"]["uid"]] = item
        # Watching from the oldest version shows every later change (again, for the other lists: harmless).
        return pods, min(versions, key=int)

    def _remember_deletion(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") and meta["uid"] not in self._deletion_grace:
            grace = meta.get("deletionGracePeriodSeconds")
            self._deletion_grace[meta["uid"]] = float(grace if grace is not None else _spec_grace(pod))

    def _replace_all(self, pods: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            for uid, old in self._pods.items():
                if uid not in pods:
                    self._vanished[uid] = old
            for pod in pods.values():
                self._remember_deletion(pod)
            self._pods = pods
        self.synced.set()
        self._wake.set()

    def _watch_loop(self) -> None:
        from kubernetes import watch

        while not self._stopping.is_set():
            try:
                pods, version = self._list()
                self._replace_all(pods)
                # One watch per namespace would need a thread each; watching all and filtering is simpler.
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, label_selector=JOB_LABEL,
                    resource_version=version or None, timeout_seconds=20, _request_timeout=40,
                )
                for event in stream:
                    if self._stopping.is_set():
                        break
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    obj = event["raw_object"]
                    meta = obj["metadata"]
                    if self.namespaces and meta["namespace"] not in self.namespaces:
                        continue
                    with self._lock:
                        if event["type"] == "DELETED":
                            if meta["uid"] not in self._deletion_grace:
                                # Deleted without a graceful phase first: a force delete (grace 0); a pod bound
                                # to a node always shows its deletionTimestamp before it goes otherwise.
                                grace = meta.get("deletionGracePeriodSeconds")
                                self._deletion_grace[meta["uid"]] = float(grace or 0)
                            self._pods.pop(meta["uid"], None)
                            self._vanished[meta["uid"]] = obj
                        else:
                            self._remember_deletion(obj)
                            self._pods[meta["uid"]] = obj
                    self._wake.set()
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._log("-", "-", "error", f"pod watch failed ({exc!r}); listing again", record=False)
                self._stopping.wait(1.0)

    # -- the node side: one loop thread ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.wait(self.interval)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                try:
                    self._sync()
                except Exception as exc:
                    self._log("-", "-", "error", f"sync failed: {exc!r}", record=False)
        finally:
            self._shutdown_all(self._stop_grace)

    def _sync(self) -> None:
        with self._lock:
            pods = dict(self._pods)
            vanished, self._vanished = self._vanished, {}
            graces = dict(self._deletion_grace)
        now = time.monotonic()
        for uid, c in list(self._containers.items()):
            pod = pods.get(uid)
            deleting = pod is None or bool(pod["metadata"].get("deletionTimestamp"))
            self._reap(c)
            if deleting:
                c.pod_gone = True
                if c.term_sent is None and c.exit_code is None:
                    grace = graces.get(uid, c.spec_grace)
                    self._terminate(c, grace, "deleted" if pod is None else "deletion requested")
            elif c.exit_code is not None and not c.reported and pod is not None:
                self._report(c, pod)
            if c.kill_at is not None and c.exit_code is None and c.hard_sent is None and now >= c.kill_at:
                self._log(c.namespace, c.pod, "killed", "grace period over: SIGKILL to the container")
                self._hard_kill(c)
            if c.exit_code is not None and (c.reported or c.pod_gone):
                with self._lock:
                    del self._containers[uid]
        for uid in vanished:
            self._waiting.pop(uid, None)
            self._done.discard(uid)
            with self._lock:
                self._deletion_grace.pop(uid, None)
        for uid, pod in pods.items():
            if uid in self._containers or uid in self._done or not _startable(pod):
                continue
            self._start(pod, pods)

    # -- containers ----------------------------------------------------------------------------------------

    def _start(self, pod: dict[str, Any], pods: Mapping[str, dict[str, Any]]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        role = (meta.get("labels") or {}).get(ROLE_LABEL, "")
        container = pod["spec"]["containers"][0]
        try:
            command = self._command(pod, pods)
        except WaitingError as exc:
            if self._waiting.get(uid) != str(exc):
                self._waiting[uid] = str(exc)
                self._log(ns, name, "waiting", str(exc))
            return
        self._waiting.pop(uid, None)
        pod_dir = self._pod_dir(ns, name)
        log = self.pod_log(ns, name)
        termination_log = pod_dir / TERMINATION_MESSAGE_FILE
        argv, env = command.argv, command.env
        env[RUNNER_ID_ENV] = self.id
        env[POD_UID_ENV] = uid
        env[PARENT_ENV] = str(os.getpid())
        with log.open("ab") as out:
            out.write(f"--- {rfc3339(utc_now())} {ns}/{name} ({uid}): {_show(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                [self.python, "-m", "spotrain_dev.podrunner", "--shim", "--", *argv],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        c = _Container(
            uid=uid, namespace=ns, pod=name, role=role, container=container["name"],
            image=container.get("image", ""), popen=popen, log=log, termination_log=termination_log,
            message_policy=container.get("terminationMessagePolicy") or "File", spec_grace=_spec_grace(pod),
            started_at=utc_now(), started_mono=time.monotonic(),
        )
        with self._lock:
            self._containers[uid] = c
        self._done.add(uid)
        self._log(ns, name, "started", f"{role} on {pod['spec'].get('nodeName')} at {pod['status']['podIP']}, "
                  f"pid {popen.pid}: {_show(argv)}")

    def _pod_dir(self, namespace: str, pod: str) -> Path:
        pod_dir = self.workdir / "pods" / namespace / pod
        if pod_dir.exists():
            shutil.rmtree(pod_dir)  # an earlier pod of the same name: a new pod starts with empty volumes
        for sub in ("state", "staging", "tmp"):
            (pod_dir / sub).mkdir(parents=True)
        return pod_dir

    def _command(self, pod: Mapping[str, Any], pods: Mapping[str, dict[str, Any]]) -> Command:
        """The container's argv and environment: read what its spec refers to, let the pure resolver
        (environment, commands) decide, and check that what it will listen on is free."""
        meta = pod["metadata"]
        role = (meta.get("labels") or {}).get(ROLE_LABEL, "")
        if role not in ("rendezvous", "worker"):
            raise WaitingError(f"unknown role {role!r}; not run")
        container = pod["spec"]["containers"][0]
        spec_env = container_env(pod, container, self._namespace_objects(meta["namespace"], container))
        host = Host(self.python, dict(os.environ), self.workdir / "pods" / meta["namespace"] / meta["name"])
        if role == "rendezvous":
            command = rendezvous_command(pod, container, spec_env, host)
        else:
            endpoint = spec_env.get(envvars.RDZV_ENDPOINT)
            store = self._store_endpoint(endpoint, pods) if endpoint else None
            command = worker_command(pod, container, spec_env, host, store)
        for ip, port in command.listens:
            _check_bindable(ip, port)
        return command

    def _namespace_objects(self, namespace: str, container: Mapping[str, Any]) -> NamespaceObjects:
        """The Secrets and ConfigMaps ``container`` refers to, those that exist."""
        from kubernetes.client.rest import ApiException

        secret_names, config_map_names = referenced_objects(container)
        secrets: dict[str, dict[str, str]] = {}
        config_maps: dict[str, dict[str, str]] = {}
        for name in secret_names:
            try:
                secret = self.core.read_namespaced_secret(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise WaitingError(f"Secret {namespace}/{name}: {exc.reason}") from exc
            secrets[name] = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        for name in config_map_names:
            try:
                config_maps[name] = dict(self.core.read_namespaced_config_map(name, namespace).data or {})
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise WaitingError(f"ConfigMap {namespace}/{name}: {exc.reason}") from exc
        return NamespaceObjects(secrets, config_maps)

    def _store_endpoint(self, endpoint: str, pods: Mapping[str, dict[str, Any]]) -> str:
        """The rendezvous Service's name -> the address of its store pod, once that store accepts connections
        (kube-proxy and DNS, for one Service)."""
        from kubernetes.client.rest import ApiException

        service_ref = rendezvous_service(endpoint)
        if service_ref is None:
            return endpoint  # an address already
        name, namespace, port = service_ref
        try:
            service = self.core.read_namespaced_service(name, namespace)
        except ApiException as exc:
            raise WaitingError(f"service {namespace}/{name} of {endpoint}: {exc.reason}") from exc
        assert self._api is not None
        served = self._api.sanitize_for_serialization(service)
        for candidate in store_candidates(served, namespace, port, pods.values()):
            ip, _, candidate_port = candidate.rpartition(":")
            if _port_open(ip, int(candidate_port)):
                return candidate
        raise WaitingError(f"no rendezvous store of {namespace}/{name} accepting connections yet")

    def _terminate(self, c: _Container, grace: float, why: str) -> None:
        grace = max(grace, MIN_GRACE_SECONDS)
        self._log(c.namespace, c.pod, "terminating", f"{why}: SIGTERM, SIGKILL after {grace:g} s")
        c.term_sent = time.monotonic()
        c.kill_at = c.term_sent + grace
        with contextlib.suppress(ProcessLookupError):
            c.popen.send_signal(signal.SIGTERM)

    def _hard_kill(self, c: _Container) -> None:
        c.hard_sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            c.popen.send_signal(HARD_KILL_SIGNAL)

    def _reap(self, c: _Container) -> None:
        if c.exit_code is not None:
            return
        if c.hard_sent is not None and time.monotonic() > c.hard_sent + 10 and c.popen.poll() is None:
            # The shim did not finish the kill: take it down too (its tree may then be orphaned).
            kill_descendants(c.popen.pid)
            c.popen.kill()
        code = c.popen.poll()
        if code is None:
            return
        c.exit_code = code
        c.finished_at = utc_now()
        seconds = time.monotonic() - c.started_mono
        self._log(c.namespace, c.pod, "exited", f"exit code {code} after {seconds:.1f} s", exit_code=code)

    def _message(self, c: _Container) -> str:
        try:
            data = c.termination_log.read_bytes()[:MAX_MESSAGE_BYTES]
        except OSError:
            data = b""
        if not data.strip() and c.exit_code and c.message_policy == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                data = b"\n".join(c.log.read_bytes().splitlines()[-FALLBACK_LOG_LINES:])[-2048:]
        return data.decode(errors="replace")

    def _report(self, c: _Container, pod: Mapping[str, Any]) -> None:
        """What kubelet writes when a container of a restartPolicy=Never pod exits."""
        from kubernetes.client.rest import ApiException

        assert c.exit_code is not None and c.finished_at is not None
        now = rfc3339(utc_now())
        code = c.exit_code
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": self._message(c),
            "startedAt": rfc3339(c.started_at),
            "finishedAt": rfc3339(c.finished_at),
            "containerID": f"podrunner://{c.popen.pid}",
        }
        statuses = [{"name": c.container, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
                     "started": False, "state": {"terminated": terminated}}]
        phase = "Succeeded" if code == 0 else "Failed"
        body = {
            "metadata": {"uid": c.uid},
            "status": {
                "phase": phase,
                "conditions": [
                    {"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
                    for t in ("Ready", "ContainersReady")
                ],
                "containerStatuses": statuses,
            },
        }
        try:
            self.core.patch_namespaced_pod_status(c.pod, c.namespace, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                c.pod_gone = True  # deleted, or a new pod of the same name
                return
            self._log(c.namespace, c.pod, "error", f"status update failed ({exc.status} {exc.reason}); retrying")
            return
        c.reported = True
        self._log(c.namespace, c.pod, "reported", f"phase {phase}, exit code {code}",
                  exit_code=code)

    def _shutdown_all(self, grace: float) -> None:
        containers = list(self._containers.values())
        for c in containers:
            self._reap(c)
            if c.exit_code is None and c.term_sent is None:
                self._terminate(c, grace, "pod runner stopping")
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.popen.poll() is None for c in containers):
            time.sleep(0.1)
        for c in containers:
            if c.popen.poll() is None:
                self._log(c.namespace, c.pod, "killed", "pod runner stopping: SIGKILL to the container")
                self._hard_kill(c)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(c.popen.poll() is None for c in containers):
            time.sleep(0.1)
        for c in containers:
            if c.popen.poll() is None:
                kill_descendants(c.popen.pid)
                c.popen.kill()
                c.popen.wait()
            self._reap(c)


# -- helpers ---------------------------------------------------------------------------------------------


def _startable(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return (status.get("phase") == "Running" and bool(status.get("podIP"))
            and bool((pod.get("spec") or {}).get("nodeName")) and not pod["metadata"].get("deletionTimestamp"))


def _spec_grace(pod: Mapping[str, Any]) -> float:
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    return float(DEFAULT_GRACE_SECONDS if grace is None else grace)


def _show(argv: list[str]) -> str:
    """A command line for a log line (an inline script as ``<script>``)."""
    return " ".join("<script>" if "\n" in a else a for a in argv)


def _check_bindable(ip: str, port: int) -> None:
    """In a pod its ports are its own; here every pod shares this machine's loopback, and another devcluster on
    the same machine hands out the same pod IPs. Better to wait, saying why, than to run a container that cannot
    listen."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as exc:
            raise WaitingError(f"{ip}:{port} cannot be bound ({exc.strerror}): another process, perhaps of "
                               "another devcluster on this machine, holds it") from exc


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--shim"]:
        rest = args[1:]
        code = shim_main(rest[1:] if rest[:1] == ["--"] else rest)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no interpreter shutdown (it restores default signal handlers) between here and the exit
    parser = argparse.ArgumentParser(prog="python -m spotrain_dev.podrunner", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=str(REPO / ".dev" / "kubeconfig"))
    parser.add_argument("--workdir", default=str(REPO / ".dev" / "podrunner"))
    parser.add_argument("--namespace", action="append", default=[], help="only pods of this namespace (repeatable)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL on exit")
    opts = parser.parse_args(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    runner = PodRunner(Path(opts.kubeconfig), Path(opts.workdir), tuple(opts.namespace), echo=True)
    runner.start()
    try:
        stop.wait()
    finally:
        runner.stop(opts.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
