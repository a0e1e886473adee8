"""What the pod runner runs for spotrain's two kinds of pod, as pure functions: a container's argv and
environment on this machine, where every pod shares loopback and there is neither cluster DNS nor kube-proxy.

* the rendezvous store (``role=rendezvous``) runs as its container says, bound to the pod IP (in a pod it binds
  0.0.0.0, which here would be every pod's address at once);
* a worker (``role=worker``) gets the rendezvous Service name replaced by the address of the Service's current
  store pod, its control server bound on the pod IP, and per-pod directories where a pod has its own filesystem.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotrain_dev.podrunner.environment import WaitingError, expand
from spotrain_protocol import WorkerEnv, envvars

ROUND_LABEL = "spotrain.dev/round"
TERMINATION_MESSAGE_FILE = "termination-log"  # in the pod's directory: what kubelet mounts at terminationMessagePath
# What the image gives every container besides PATH, taken from the runner's own environment where it has them
# (PYTHONPATH: a checkout run with a shared venv runs its own code).
INHERITED_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH")


@dataclass(frozen=True)
class Host:
    """What this machine decides for one pod's container."""

    python: str  # the venv's interpreter: the image's programs run from this venv
    runner_env: Mapping[str, str]  # the runner's own environment (PATH and INHERITED_ENV are taken from it)
    pod_dir: Path  # the pod's own directories: state, staging, tmp, the termination message file


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    listens: list[tuple[str, int]]  # the addresses the container will bind: the runner checks that they are free


def base_env(pod: Mapping[str, Any], host: Host) -> dict[str, str]:
    """What a container has before its spec's env: the image's (this venv first on PATH), locale, HOSTNAME."""
    venv_bin = str(Path(host.python).parent)
    env = {
        "PATH": ":".join([venv_bin, host.runner_env.get("PATH", "/usr/bin:/bin")]),
        "HOSTNAME": pod["metadata"]["name"],
        "PYTHONUNBUFFERED": "1",
    }
    env.update({key: host.runner_env[key] for key in INHERITED_ENV if key in host.runner_env})
    return env


def executable(argv: Sequence[str], python: str) -> list[str]:
    """The image's programs, from this venv."""
    if argv[0] in ("python", "python3", "python3.11"):
        return [python, *argv[1:]]
    if argv[0] == "spotrain-launch":
        return [python, "-m", "spotrain_trainer.launch", *argv[1:]]
    return list(argv)


def flag(args: Iterable[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``args``."""
    items = list(args)
    for i, arg in enumerate(items):
        if arg == name and i + 1 < len(items):
            return items[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def rendezvous_command(
    pod: Mapping[str, Any], container: Mapping[str, Any], spec_env: Mapping[str, str], host: Host
) -> Command:
    """The store's container as it is (``python -m spotrain_trainer.rendezvous --port P``) with ``--host <pod IP>``."""
    ip = pod["status"]["podIP"]
    env = {**base_env(pod, host), **spec_env, "TMPDIR": str(host.pod_dir / "tmp")}
    command = [expand(str(a), env) for a in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    if not command:
        raise WaitingError("rendezvous container has no command")
    port = flag(args, "--port") or next(
        (str(p["containerPort"]) for p in container.get("ports") or [] if p.get("containerPort")), None
    )
    if port is None or not port.isdigit():
        raise WaitingError("rendezvous container has neither --port nor a containerPort")
    return Command(executable([*command, *args, "--host", ip], host.python), env, [(ip, int(port))])


def rendezvous_service(endpoint: str) -> tuple[str, str, str] | None:
    """``<service>.<ns>.svc[.cluster.local]:<port>`` -> (service, namespace, port); None for an address."""
    host, _, port = endpoint.rpartition(":")
    parts = host.split(".")
    if len(parts) < 3 or parts[2] != "svc":
        return None
    return parts[0], parts[1], port


def store_candidates(
    service: Mapping[str, Any], namespace: str, port: str, pods: Iterable[Mapping[str, Any]]
) -> list[str]:
    """``ip:targetPort`` of the Service's Running pods, the newest round first: what kube-proxy would pick from
    (the runner takes the first one that accepts connections). ``service`` as the API serves it."""
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    target = port
    for p in spec.get("ports") or []:
        target_port = p.get("targetPort")
        if str(p.get("port")) == port and target_port is not None and str(target_port).isdigit():
            target = str(target_port)
    candidates = [
        p
        for p in pods
        if p["metadata"]["namespace"] == namespace
        and not p["metadata"].get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") == "Running"
        and (p.get("status") or {}).get("podIP")
        and selector
        and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
    ]
    candidates.sort(
        key=lambda p: (
            int((p["metadata"].get("labels") or {}).get(ROUND_LABEL, 0)),
            p["metadata"].get("creationTimestamp", ""),
        ),
        reverse=True,
    )
    return [f"{p['status']['podIP']}:{target}" for p in candidates]


def worker_command(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    spec_env: Mapping[str, str],
    host: Host,
    rdzv_endpoint: str | None,
) -> Command:
    """``spotrain-launch <args>`` with the pod's environment and what this machine's layout decides:
    ``rdzv_endpoint`` (the store's address, for the Service name in the spec), the pod IP to bind, and the pod's
    own directories."""
    ip = pod["status"]["podIP"]
    ports = [spec_env.get(envvars.CONTROL_PORT)] + [str(p.get("containerPort")) for p in container.get("ports") or []]
    env = {**base_env(pod, host), **spec_env}
    env.update(
        WorkerEnv(
            rdzv_endpoint=rdzv_endpoint,
            control_bind=ip,
            state_dir=str(host.pod_dir / "state"),
            staging_dir=str(host.pod_dir / "staging"),
            termination_log=str(host.pod_dir / TERMINATION_MESSAGE_FILE),
        ).to_env()
    )
    env["TMPDIR"] = str(host.pod_dir / "tmp")
    command = [str(a) for a in container.get("command") or ["spotrain-launch"]]
    args = [str(a) for a in container.get("args") or []]
    argv = [expand(a, env) for a in [*command, *args]]
    return Command(executable(argv, host.python), env, [(ip, int(p)) for p in ports if p and p.isdigit()])
