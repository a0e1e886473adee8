"""``spotrain-launch``: the worker container's entry point.

Reads the settings the operator puts in the pod's environment, starts the control server as a small separate
process that dies with the pod (``PR_SET_PDEATHSIG`` tied to this process, which becomes torchrun), then
``exec``s torchrun, so that SIGTERM from the kubelet reaches the torchrun agent (PID 1 of the container) and
from there the workers.

    spotrain-launch [--print] [--no-control-server] [-m] [--] script.py args...

``--print`` shows the environment additions and the torchrun command line and exits. ``-m`` runs a module
(``python -m``) instead of a script. :func:`build_launch` is the pure function behind it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .config import ConfigError, env_float, env_int, env_str
from .constants import DEFAULT_CONTROL_PORT, DEFAULT_MAX_RESTARTS, DEFAULT_STATE_DIR

PR_SET_PDEATHSIG = 1


@dataclass
class LaunchPlan:
    argv: list[str]  # torchrun (as `python -m torch.distributed.run`) and its arguments
    env: dict[str, str]  # the complete environment for torchrun
    env_added: dict[str, str] = field(default_factory=dict)  # what we set on top of the pod's environment
    control_server_argv: list[str] | None = None


def _parse_endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"SPOTRAIN_RDZV_ENDPOINT={value!r} is not host:port")
    return value


def build_launch(
    env: Mapping[str, str],
    script: Sequence[str],
    *,
    python: str | None = None,
    module: bool = False,
    control_server: bool = True,
) -> LaunchPlan:
    """The torchrun argv and environment for this pod. Pure: reads only ``env``; raises ConfigError."""
    if not script:
        raise ConfigError("no training script given")
    py = python or sys.executable
    endpoint = _parse_endpoint(env_str(env, "SPOTRAIN_RDZV_ENDPOINT", required=True))
    job = env_str(env, "SPOTRAIN_JOB_NAME", "local")
    rdzv_id = env_str(env, "SPOTRAIN_RDZV_ID", job)
    min_nodes = env_int(env, "SPOTRAIN_MIN_NODES", 1, minimum=1)
    max_nodes = env_int(env, "SPOTRAIN_MAX_NODES", min_nodes, minimum=1)
    if min_nodes > max_nodes:
        raise ConfigError(f"SPOTRAIN_MIN_NODES={min_nodes} is above SPOTRAIN_MAX_NODES={max_nodes}")
    nproc = env_int(env, "SPOTRAIN_NPROC_PER_NODE", 1, minimum=1)
    max_restarts = env_int(env, "SPOTRAIN_MAX_RESTARTS", DEFAULT_MAX_RESTARTS, minimum=0)
    # last_call_timeout: once min nodes are in, torch waits this long for more (default 30 s). After a preemption
    # the survivors would idle that long; spotrain batches joins in the operator instead, so 5 s is enough.
    conf = {"is_host": "false", "last_call_timeout": "5"}
    extra = env.get("SPOTRAIN_RDZV_CONF_EXTRA", "").strip().strip(",")
    if extra:
        for item in extra.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"SPOTRAIN_RDZV_CONF_EXTRA entry {item!r} is not key=value")
            conf[key.strip()] = value.strip()

    argv = [
        py,
        "-m",
        "torch.distributed.run",
        f"--nnodes={min_nodes}:{max_nodes}",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={rdzv_id}",
        f"--rdzv-conf={','.join(f'{k}={v}' for k, v in conf.items())}",
    ]
    pod_ip = (env.get("POD_IP") or "").strip()
    if pod_ip:
        argv.append(f"--local-addr={pod_ip}")
    if (env.get("SPOTRAIN_SHUTDOWN_TIMEOUT") or "").strip():
        argv.append(f"--shutdown-timeout={env_int(env, 'SPOTRAIN_SHUTDOWN_TIMEOUT', 30, minimum=1)}")
    if (env.get("SPOTRAIN_MONITOR_INTERVAL") or "").strip():
        argv.append(f"--monitor-interval={env_float(env, 'SPOTRAIN_MONITOR_INTERVAL', 0.1)}")
    if module:
        argv.append("-m")
    argv.extend(script)

    added = {
        # Without this, scale-up hangs: agents wait for the new round's MASTER_ADDR on the shared store.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "PYTHONUNBUFFERED": "1",
        # The control server and the workers must agree on these even when the operator leaves them unset.
        "SPOTRAIN_STATE_DIR": env_str(env, "SPOTRAIN_STATE_DIR", DEFAULT_STATE_DIR),
        "SPOTRAIN_CONTROL_PORT": str(env_int(env, "SPOTRAIN_CONTROL_PORT", DEFAULT_CONTROL_PORT, minimum=0)),
    }
    full = dict(env)
    full.update(added)
    server = [py, "-m", "spotrain_trainer.server"] if control_server else None
    return LaunchPlan(argv=argv, env=full, env_added=added, control_server_argv=server)


def _pdeathsig_preexec(parent_pid: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        os._exit(70)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def start_control_server(plan: LaunchPlan) -> subprocess.Popen[bytes] | None:
    if plan.control_server_argv is None:
        return None
    parent = os.getpid()
    env = dict(plan.env)
    env["SPOTRAIN_LAUNCH_PID"] = str(parent)
    return subprocess.Popen(
        plan.control_server_argv,
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: _pdeathsig_preexec(parent),  # the launcher is single-threaded
        close_fds=True,
    )


USAGE = "usage: spotrain-launch [--print] [--no-control-server] [-m] [--] script.py [args...]"


def parse_args(argv: Sequence[str]) -> tuple[dict[str, bool], list[str]]:
    opts = {"print": False, "control_server": True, "module": False}
    rest = list(argv)
    while rest:
        arg = rest[0]
        if arg == "--":
            rest.pop(0)
            break
        if arg == "--print":
            opts["print"] = True
        elif arg == "--no-control-server":
            opts["control_server"] = False
        elif arg in ("-m", "--module"):
            opts["module"] = True
        elif arg in ("-h", "--help"):
            raise SystemExit(USAGE)
        elif arg.startswith("-"):
            raise ConfigError(f"unknown option {arg!r}\n{USAGE}")
        else:
            break
        rest.pop(0)
    return opts, rest


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts, script = parse_args(args)
        control = opts["control_server"] and os.environ.get("SPOTRAIN_CONTROL_SERVER", "1") not in ("0", "false")
        plan = build_launch(os.environ, script, module=opts["module"], control_server=control)
    except ConfigError as exc:
        print(f"spotrain-launch: {exc}", file=sys.stderr)
        return 2
    if opts["print"]:
        for key, value in sorted(plan.env_added.items()):
            print(f"export {key}={shlex.quote(value)}")
        if plan.control_server_argv:
            print(f"# control server (background, dies with torchrun): {shlex.join(plan.control_server_argv)}")
        print(f"exec {shlex.join(plan.argv)}")
        return 0
    os.makedirs(plan.env["SPOTRAIN_STATE_DIR"], exist_ok=True)
    start_control_server(plan)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(plan.argv[0], plan.argv, plan.env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
