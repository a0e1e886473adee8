"""A tiny kubelet for the devcluster: runs the containers of spotrain's KWOK pods as real processes on this
machine, so that jobs on simulated nodes train for real.

KWOK makes a pod Running and gives it an IP on loopback (127.x.y.z, from its node's podCIDR) but runs nothing.
``PodRunner`` watches the pods labelled ``spotrain.dev/job`` and, for each one that is Running with an IP:

* ``role=rendezvous``: runs the container (the job's standalone c10d store, ``python -m
  spotrain_trainer.rendezvous --port P``) with ``--host <pod IP>``;
* ``role=worker``: runs the container (``spotrain-launch <args>``: the image's entry point) with the pod's
  environment resolved (values, ``$(VAR)`` references, the downward API, Secret and ConfigMap keys), the
  rendezvous Service name replaced by the current rendezvous pod's IP (there is no cluster DNS here), the control
  server bound on the pod IP, and per-pod directories (state, staging, ``TMPDIR``, termination message file);
  the working directory is the repository, so ``examples/train_tiny.py`` resolves.

What a kubelet does when a pod goes is what happens here: on deletion (seen as a ``deletionTimestamp`` or the pod
vanishing; KWOK removes a pod as soon as it is marked) the container's main process gets SIGTERM, and whatever
is left of the container gets SIGKILL after the grace period (``deletionGracePeriodSeconds`` of the delete or
eviction where the watch showed it, else ``terminationGracePeriodSeconds``; at least 2 s, as kubelet does). When
a container exits by itself, the pod's status becomes Succeeded (exit 0) or Failed, with
``containerStatuses[0].state.terminated`` (exit code, reason, the termination message file as ``message``,
start and finish times), which is where the operator reads the trainer's completion message.

Every container runs under a small shim (``python -m spotrain_dev.podrunner --shim -- argv``), the part a
container runtime plays: it is a child subreaper, so torchrun's workers (which run in sessions of their own)
stay in its process tree; SIGTERM to the shim goes to the container's main process only (PID 1 in a pod), and
when the main process exits, or the runner asks for a hard kill (SIGUSR1), or the runner dies (the shim's
``PR_SET_PDEATHSIG`` is SIGHUP), everything left in the tree is SIGKILLed. So nothing outlives the runner.

Restart policy is ``Never`` whatever the pod says (spotrain's pods are all ``Never``); only the first container
of a pod is run.

    python -m spotrain_dev.podrunner --kubeconfig .dev/kubeconfig [--workdir DIR] [--namespace NS ...]

One line per container start, signal and exit goes to ``<workdir>/podrunner.log`` (and, with the CLI, to
stderr); each container's output goes to ``<workdir>/pods/<namespace>/<pod>.log``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotrain_protocol import WorkerEnv, envvars
from spotrain_trainer.processes import process_tree

if TYPE_CHECKING:
    from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
JOB_LABEL = "spotrain.dev/job"  # = spotrain_operator.wellknown.JOB_LABEL (not imported: the shim imports no kopf)
ROLE_LABEL = "spotrain.dev/role"
ROUND_LABEL = "spotrain.dev/round"
RUNNER_ID_ENV = "SPOTRAIN_PODRUNNER_ID"  # in every container's environment: finds leftovers, like a cgroup
POD_UID_ENV = "SPOTRAIN_PODRUNNER_POD_UID"
PARENT_ENV = "SPOTRAIN_PODRUNNER_PARENT"
MIN_GRACE_SECONDS = 2.0  # kubelet's minimumGracePeriodInSeconds
DEFAULT_GRACE_SECONDS = 30.0  # the API's default terminationGracePeriodSeconds
MAX_MESSAGE_BYTES = 4096  # kubelet's limit on a container's termination message
TERMINATION_MESSAGE_FILE = "termination-log"  # in the pod's directory: what kubelet mounts at terminationMessagePath
FALLBACK_LOG_LINES = 80  # terminationMessagePolicy FallbackToLogsOnError: kubelet's tail
HARD_KILL_SIGNAL = signal.SIGUSR1  # runner -> shim: SIGKILL the whole container now

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _rfc3339(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the shim ----------------------------------------------------------------------------------------------


def _kill_tree(root: int) -> None:
    for pid in process_tree(root)[1:]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def shim_main(argv: list[str]) -> int:
    """The container runtime's part for one container: runs ``argv`` as the main process and exits with its
    code (128 + N when killed by signal N); see the module docstring for the signals."""
    if not argv:
        print("podrunner shim: no command", file=sys.stderr)
        return 127
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
    parent = os.environ.pop(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):
        return 137  # the runner died before PR_SET_PDEATHSIG took effect
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    me = os.getpid()
    main_pid = 0
    main_status: int | None = None
    hard = False

    def on_term(signum: int, frame: object) -> None:
        if main_pid and main_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(main_pid, signal.SIGTERM)

    def on_hard(signum: int, frame: object) -> None:
        nonlocal hard
        hard = True
        _kill_tree(me)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # restored to default in the child by posix_spawn's setsigdef
    signal.signal(HARD_KILL_SIGNAL, on_hard)
    signal.signal(signal.SIGHUP, on_hard)
    try:
        main_pid = os.posix_spawnp(argv[0], argv, dict(os.environ), setsigdef=(signal.SIGINT,))
    except OSError as exc:
        print(f"podrunner shim: cannot run {argv[0]}: {exc}", file=sys.stderr, flush=True)
        return 127
    if hard:
        _kill_tree(me)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == main_pid:
            main_status = status
        if main_status is not None or hard:
            # PID 1 of a container has exited (or the container is being killed): nothing else in it survives.
            _kill_tree(me)
    # Done: a late signal (say, to the whole process group) must not turn the exit status into "killed".
    for signum in (signal.SIGTERM, signal.SIGHUP, HARD_KILL_SIGNAL):
        signal.signal(signum, signal.SIG_IGN)
    if main_status is None:
        return 137
    code = os.waitstatus_to_exitcode(main_status)
    return 128 - code if code < 0 else code


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


class WaitingError(Exception):
    """A container cannot start yet (a missing Secret, no rendezvous store yet): retried."""


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
            if role == "rendezvous":
                argv, env = self._rendezvous_command(pod, container)
            elif role == "worker":
                argv, env = self._worker_command(pod, container, pods)
            else:
                raise WaitingError(f"unknown role {role!r}; not run")
        except WaitingError as exc:
            if self._waiting.get(uid) != str(exc):
                self._waiting[uid] = str(exc)
                self._log(ns, name, "waiting", str(exc))
            return
        self._waiting.pop(uid, None)
        pod_dir = self._pod_dir(ns, name)
        log = self.pod_log(ns, name)
        termination_log = pod_dir / TERMINATION_MESSAGE_FILE
        env[RUNNER_ID_ENV] = self.id
        env[POD_UID_ENV] = uid
        env[PARENT_ENV] = str(os.getpid())
        with log.open("ab") as out:
            out.write(f"--- {_rfc3339(_now())} {ns}/{name} ({uid}): {_show(argv)}\n".encode())
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
            started_at=_now(), started_mono=time.monotonic(),
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

    def _base_env(self, pod: Mapping[str, Any]) -> dict[str, str]:
        """What a container has before its spec's env: the image's (this venv first on PATH; PYTHONPATH where
        the runner has one, so that a checkout run with a shared venv runs its own code), locale, HOSTNAME."""
        venv_bin = str(Path(self.python).parent)
        env = {"PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")]),
               "HOSTNAME": pod["metadata"]["name"], "PYTHONUNBUFFERED": "1"}
        for key in ("HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH"):
            if key in os.environ:
                env[key] = os.environ[key]
        return env

    def _rendezvous_command(self, pod: Mapping[str, Any], container: Mapping[str, Any]
                            ) -> tuple[list[str], dict[str, str]]:
        """The store's container as it is (``python -m spotrain_trainer.rendezvous --port P``), bound to the pod
        IP: inside a pod it binds 0.0.0.0, which here would be every pod's address at once."""
        ip = pod["status"]["podIP"]
        command = [str(a) for a in container.get("command") or []]
        args = [str(a) for a in container.get("args") or []]
        if not command:
            raise WaitingError("rendezvous container has no command")
        port = _flag(args, "--port") or next(
            (str(p["containerPort"]) for p in container.get("ports") or [] if p.get("containerPort")), None)
        if port is None or not port.isdigit():
            raise WaitingError("rendezvous container has neither --port nor a containerPort")
        _check_bindable(ip, int(port))
        env = {**self._base_env(pod), **self._resolve_env(pod, container)}
        env["TMPDIR"] = str(self.workdir / "pods" / pod["metadata"]["namespace"] / pod["metadata"]["name"] / "tmp")
        argv = [_expand(a, env) for a in [*command, *args]]
        return self._executable([*argv, "--host", ip]), env

    def _worker_command(self, pod: Mapping[str, Any], container: Mapping[str, Any],
                        pods: Mapping[str, dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
        meta = pod["metadata"]
        ip = pod["status"]["podIP"]
        spec_env = self._resolve_env(pod, container)
        for port in [spec_env.get(envvars.CONTROL_PORT)] + [str(p.get("containerPort"))
                                                             for p in container.get("ports") or []]:
            if port and port.isdigit():
                _check_bindable(ip, int(port))
        env = {**self._base_env(pod), **spec_env}
        endpoint = spec_env.get(envvars.RDZV_ENDPOINT)
        pod_dir = self.workdir / "pods" / meta["namespace"] / meta["name"]
        # What this machine's layout decides: the rendezvous pod's IP for its Service name, the pod IP to bind, and
        # per-pod directories where a pod would have its own filesystem.
        env.update(WorkerEnv(
            rdzv_endpoint=self._resolve_endpoint(meta["namespace"], endpoint, pods) if endpoint else None,
            control_bind=ip,
            state_dir=str(pod_dir / "state"),
            staging_dir=str(pod_dir / "staging"),
            termination_log=str(pod_dir / TERMINATION_MESSAGE_FILE),
        ).to_env())
        env["TMPDIR"] = str(pod_dir / "tmp")
        command = [str(a) for a in container.get("command") or ["spotrain-launch"]]
        args = [str(a) for a in container.get("args") or []]
        argv = [_expand(a, env) for a in [*command, *args]]
        return self._executable(argv), env

    def _executable(self, argv: list[str]) -> list[str]:
        """The image's programs, from this venv."""
        if argv[0] in ("python", "python3", "python3.11"):
            return [self.python, *argv[1:]]
        if argv[0] == "spotrain-launch":
            return [self.python, "-m", "spotrain_trainer.launch", *argv[1:]]
        return argv

    def _resolve_endpoint(self, namespace: str, endpoint: str, pods: Mapping[str, dict[str, Any]]) -> str:
        """``<service>.<ns>.svc[.cluster.local]:<port>`` -> ``<ip of the service's ready pod>:<targetPort>``,
        once that pod's store is accepting connections (kube-proxy and DNS, for one Service)."""
        host, _, port_text = endpoint.rpartition(":")
        parts = host.split(".")
        if len(parts) < 3 or parts[2] != "svc":
            return endpoint  # an address already
        service_name, service_ns = parts[0], parts[1]
        from kubernetes.client.rest import ApiException

        try:
            service = self.core.read_namespaced_service(service_name, service_ns)
        except ApiException as exc:
            raise WaitingError(f"service {service_ns}/{service_name} of {endpoint}: {exc.reason}") from exc
        selector = service.spec.selector or {}
        target = port_text
        for p in service.spec.ports or []:
            if str(p.port) == port_text and p.target_port is not None and str(p.target_port).isdigit():
                target = str(p.target_port)
        candidates = [
            p for p in pods.values()
            if p["metadata"]["namespace"] == service_ns and not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") == "Running" and (p.get("status") or {}).get("podIP")
            and selector and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        ]
        candidates.sort(key=lambda p: (int((p["metadata"].get("labels") or {}).get(ROUND_LABEL, 0)),
                                       p["metadata"].get("creationTimestamp", "")), reverse=True)
        for p in candidates:
            ip = p["status"]["podIP"]
            if _port_open(ip, int(target)):
                return f"{ip}:{target}"
        raise WaitingError(f"no rendezvous store of {service_ns}/{service_name} accepting connections yet")

    def _resolve_env(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        """envFrom, then env in order with ``$(VAR)`` expansion, as kubelet builds a container's environment."""
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_map(ns, ref["name"], bool(ref.get("optional")))
            else:
                ref = source["secretRef"]
                data = self._secret(ns, ref["name"], bool(ref.get("optional")))
            env.update({prefix + k: v for k, v in data.items()})
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = _expand(str(item.get("value") or ""), env)
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                env[name] = _field(pod, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if secret else "configMapKeyRef"]
                optional = bool(ref.get("optional"))
                data = (self._secret if secret else self._config_map)(ns, ref["name"], optional)
                if ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not optional:
                    raise WaitingError(f"key {ref['key']!r} not in {'Secret' if secret else 'ConfigMap'} "
                                       f"{ns}/{ref['name']} (env {name})")
            else:
                raise WaitingError(f"env {name}: only fieldRef, secretKeyRef and configMapKeyRef are supported")
        return env

    def _secret(self, namespace: str, name: str, optional: bool) -> dict[str, str]:
        from kubernetes.client.rest import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise WaitingError(f"Secret {namespace}/{name}: {exc.reason}") from exc
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _config_map(self, namespace: str, name: str, optional: bool) -> dict[str, str]:
        from kubernetes.client.rest import ApiException

        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise WaitingError(f"ConfigMap {namespace}/{name}: {exc.reason}") from exc

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
            _kill_tree(c.popen.pid)
            c.popen.kill()
        code = c.popen.poll()
        if code is None:
            return
        c.exit_code = code
        c.finished_at = _now()
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
        now = _rfc3339(_now())
        code = c.exit_code
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": self._message(c),
            "startedAt": _rfc3339(c.started_at),
            "finishedAt": _rfc3339(c.finished_at),
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
                _kill_tree(c.popen.pid)
                c.popen.kill()
                c.popen.wait()
            self._reap(c)


# -- pure helpers ------------------------------------------------------------------------------------------


def _startable(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return (status.get("phase") == "Running" and bool(status.get("podIP"))
            and bool((pod.get("spec") or {}).get("nodeName")) and not pod["metadata"].get("deletionTimestamp"))


def _spec_grace(pod: Mapping[str, Any]) -> float:
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    return float(DEFAULT_GRACE_SECONDS if grace is None else grace)


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``, the rest stays."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


_FIELD_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def _field(pod: Mapping[str, Any], path: str) -> str:
    """The downward API's fieldRef paths."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"), "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"), "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(i.get("ip", "") for i in status.get("podIPs") or []),
        "status.hostIPs": ",".join(i.get("ip", "") for i in status.get("hostIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    m = _FIELD_SUBSCRIPT.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise WaitingError(f"fieldRef {path!r} is not supported")


def _flag(args: Iterable[str], name: str) -> str | None:
    items = list(args)
    for i, arg in enumerate(items):
        if arg == name and i + 1 < len(items):
            return items[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


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
