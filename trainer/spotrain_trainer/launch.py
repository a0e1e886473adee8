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
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from spotrain_protocol import envvars
from spotrain_protocol.constants import CONTROL_PORT, DEFAULT_STATE_DIR, DEFAULT_TERMINATION_LOG, RENDEZVOUS_PORT

from .agent import RDZV_BACKEND
from .config import ConfigError, default_job_name, env_float, env_int, env_str
from .constants import DEFAULT_MAX_RESTARTS

PR_SET_PDEATHSIG = 1


@dataclass
class LaunchPlan:
    argv: list[str]  # torchrun (as `python -m spotrain_trainer.agent`, torchrun itself) and its arguments
    env: dict[str, str]  # the complete environment for torchrun
    env_added: dict[str, str] = field(default_factory=dict)  # what we set on top of the pod's environment
    control_server_argv: list[str] | None = None


def _parse_endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{envvars.RDZV_ENDPOINT}={value!r} is not host:port")
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
    endpoint = _parse_endpoint(env_str(env, envvars.RDZV_ENDPOINT, required=True))
    job = env_str(env, envvars.JOB_NAME, default_job_name(script[0].replace(".", "/") if module else script[0]))
    rdzv_id = env_str(env, envvars.RDZV_ID, job)
    min_nodes = env_int(env, envvars.MIN_NODES, 1, minimum=1)
    max_nodes = env_int(env, envvars.MAX_NODES, min_nodes, minimum=1)
    if min_nodes > max_nodes:
        raise ConfigError(f"{envvars.MIN_NODES}={min_nodes} is above {envvars.MAX_NODES}={max_nodes}")
    nproc = env_int(env, envvars.NPROC_PER_NODE, 1, minimum=1)
    max_restarts = env_int(env, envvars.MAX_RESTARTS, DEFAULT_MAX_RESTARTS, minimum=0)
    # last_call_timeout: once min nodes are in, torch waits this long for more (default 30 s). After a preemption
    # the survivors would idle that long, although they re-join within a second of each other (the same failed
    # collective stops them all, and a departing agent leaves the round: agent.py). Joins are batched by the
    # operator (spec.elastic.scaleUpWindow); new nodes come up seconds apart anyway, and a late one costs one more
    # round, as with a longer last call. Measured with 5 s: notice -> first step 12.3 s, 5 s of it this wait.
    conf = {"is_host": "false", "last_call_timeout": "2"}
    extra = env.get(envvars.RDZV_CONF_EXTRA, "").strip().strip(",")
    if extra:
        for item in extra.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{envvars.RDZV_CONF_EXTRA} entry {item!r} is not key=value")
            conf[key.strip()] = value.strip()

    argv = [
        py,
        "-m",
        "spotrain_trainer.agent",  # torchrun, with its log of a notice exit reworded (see agent.py)
        f"--nnodes={min_nodes}:{max_nodes}",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        f"--rdzv-backend={RDZV_BACKEND}",  # torch's c10d handler; a departing agent leaves it (agent.py)
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={rdzv_id}",
        f"--rdzv-conf={','.join(f'{k}={v}' for k, v in conf.items())}",
    ]
    pod_ip = (env.get("POD_IP") or "").strip()
    if pod_ip:
        argv.append(f"--local-addr={pod_ip}")
    if (env.get(envvars.SHUTDOWN_TIMEOUT) or "").strip():
        argv.append(f"--shutdown-timeout={env_int(env, envvars.SHUTDOWN_TIMEOUT, 30, minimum=1)}")
    if (env.get(envvars.MONITOR_INTERVAL) or "").strip():
        argv.append(f"--monitor-interval={env_float(env, envvars.MONITOR_INTERVAL, 0.1)}")
    if module:
        argv.append("-m")
    argv.extend(script)

    added = {
        # Without this, scale-up hangs: agents wait for the new round's MASTER_ADDR on the shared store.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "PYTHONUNBUFFERED": "1",
        # The control server and the workers must agree on these even when the operator leaves them unset. The
        # state directory is the job's own: two jobs run on one machine never read each other's requests.
        envvars.STATE_DIR: env_str(env, envvars.STATE_DIR, os.path.join(DEFAULT_STATE_DIR, job)),
        envvars.CONTROL_PORT: str(env_int(env, envvars.CONTROL_PORT, CONTROL_PORT, minimum=0)),
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
    env[envvars.LAUNCH_PID] = str(parent)
    return subprocess.Popen(
        plan.control_server_argv,
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: _pdeathsig_preexec(parent),  # the launcher is single-threaded
        close_fds=True,
    )


USAGE = "usage: spotrain-launch [--print] [--no-control-server] [-m] [--] script.py [args...]"

#: (name, default, meaning) of every environment variable the launcher, the control server and the session read.
#: In a pod the operator sets them; for a local run see docs/trainer.md.
ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    (
        envvars.RDZV_ENDPOINT,
        "required",
        "host:port of the job's c10d rendezvous store (python -m "
        f"spotrain_trainer.rendezvous); launching waits for it up to {envvars.RDZV_WAIT_SECONDS}",
    ),
    (envvars.RDZV_WAIT_SECONDS, "300", "how long to wait for the store to answer before giving up"),
    (envvars.RDZV_ID, f"${envvars.JOB_NAME}", "rendezvous id (one per job generation)"),
    (envvars.RDZV_CONF_EXTRA, "", "extra torchrun --rdzv-conf entries, key=value,..."),
    (envvars.JOB_NAME, "local-<script name>", "the job; names the default checkpoint path"),
    (f"{envvars.MIN_NODES} / {envvars.MAX_NODES}", "1 / min", "torchrun --nnodes=MIN:MAX"),
    (envvars.NPROC_PER_NODE, "1", "ranks per node (one per GPU)"),
    (envvars.MAX_RESTARTS, str(DEFAULT_MAX_RESTARTS), "torchrun --max-restarts"),
    (envvars.SHUTDOWN_TIMEOUT, "30", "torchrun --shutdown-timeout: SIGTERM to SIGKILL of the workers"),
    (envvars.MONITOR_INTERVAL, "0.1", "torchrun --monitor-interval"),
    ("POD_IP / POD_NAME", "- / hostname", "torchrun --local-addr; this pod's name in status and markers"),
    (envvars.CHECKPOINT_URI, f"/tmp/spotrain-checkpoints/${envvars.JOB_NAME}", "s3://bucket/prefix or a path"),
    (envvars.CHECKPOINT_INTERVAL, "auto", "seconds between regular checkpoints, or auto (Young/Daly)"),
    (f"{envvars.CHECKPOINT_MIN_INTERVAL} / _MAX_INTERVAL", "60 / 3600", "bounds of the auto interval"),
    (envvars.CHECKPOINT_EVERY_STEPS, "", "checkpoint every N steps instead of by time"),
    (envvars.MTBF_SECONDS, "3600", "expected time between preemptions (auto interval)"),
    (envvars.CHECKPOINT_ASYNC, "1", "regular checkpoints with dcp.async_save"),
    (envvars.CHECKPOINT_WRITER_THREADS, "1", "DCP writer threads per rank"),
    (envvars.KEEP_LAST, "3", "committed checkpoints kept"),
    (envvars.STAGING_DIR, "$TMPDIR/spotrain-staging/$POD_NAME", "node-local staging for S3 (mount a volume)"),
    (f"{envvars.S3_ENDPOINT_URL} / {envvars.S3_REGION}", "", "S3-compatible endpoint and region (AWS_* credentials)"),
    (
        "SPOTRAIN_S3_*",
        "",
        "RETRY_MODE, MAX_ATTEMPTS, OP_RETRIES, BACKOFF_BASE, BACKOFF_MAX, MULTIPART_THRESHOLD, "
        "MULTIPART_CHUNKSIZE, MAX_CONCURRENCY",
    ),
    (envvars.STATE_DIR, f"{DEFAULT_STATE_DIR}/<job>", "directory shared by the workers and the control server"),
    (f"{envvars.CONTROL_PORT} / {envvars.CONTROL_BIND}", f"{CONTROL_PORT} / 0.0.0.0", "control endpoint"),
    (f"{envvars.CONTROL_TOKEN} / {envvars.CONTROL_TOKEN_FILE}", "", "bearer token of the control endpoint"),
    (envvars.CONTROL_SERVER, "1", "0: do not start the control server"),
    (envvars.TERMINATION_LOG, DEFAULT_TERMINATION_LOG, "where the final message goes"),
    (envvars.PG_TIMEOUT_SECONDS, "600", "process group timeout"),
    (envvars.STATUS_INTERVAL_SECONDS, "1", "status file refresh"),
    (envvars.LOG_LEVEL, "INFO", "workers' log level"),
)


def help_text() -> str:
    width = max(len(name) for name, _, _ in ENVIRONMENT)
    lines = [
        USAGE,
        "",
        "Runs script.py under torchrun (elastic, c10d rendezvous) with the spotrain control server beside it.",
        "  --print               show the environment additions and the torchrun command, run nothing",
        "  --no-control-server   do not start the control server",
        "  -m, --module          run a module (python -m) instead of a script",
        "",
        "Environment (default in brackets):",
    ]
    for name, default, meaning in ENVIRONMENT:
        lines.append(f"  {name:<{width}}  {meaning}" + (f" [{default}]" if default else ""))
    lines += [
        "",
        "A local run without a cluster: `python script.py` is a world of one; for several processes start a store",
        f"(python -m spotrain_trainer.rendezvous --host 127.0.0.1 --port {RENDEZVOUS_PORT}) and set",
        f"{envvars.RDZV_ENDPOINT}=127.0.0.1:{RENDEZVOUS_PORT}. See docs/trainer.md.",
    ]
    return "\n".join(lines)


class StoreUnreachable(ConfigError):
    """The rendezvous store did not answer in time."""


def wait_for_store(
    endpoint: str,
    timeout: float,
    *,
    connect: Callable[[str, int], bool],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> None:
    """Return once ``connect(host, port)`` succeeds; say so while waiting; raise StoreUnreachable at ``timeout``.

    torchrun itself would wait for the store silently (agents with ``is_host=false`` never host it)."""
    host, _, port = endpoint.rpartition(":")
    start = clock()
    next_say = start + 5.0
    while not connect(host, int(port)):
        now = clock()
        if now - start >= timeout:
            raise StoreUnreachable(
                f"the rendezvous store at {endpoint} ({envvars.RDZV_ENDPOINT}) did not answer for {timeout:.0f}s. "
                "In a cluster the operator runs it as the job's rendezvous pod; check that pod and its Service. "
                "Locally, start one with `python -m spotrain_trainer.rendezvous --host 127.0.0.1 "
                f"--port {RENDEZVOUS_PORT}` "
                "(see docs/trainer.md)"
            )
        if now >= next_say:
            say(f"spotrain-launch: waiting for the rendezvous store at {endpoint} ({now - start:.0f}s/{timeout:.0f}s)")
            next_say = now + 30.0
        sleep(1.0)


def tcp_connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


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
            print(help_text())
            raise SystemExit(0)
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
        control = opts["control_server"] and os.environ.get(envvars.CONTROL_SERVER, "1") not in ("0", "false")
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
    try:
        wait_for_store(
            plan.env[envvars.RDZV_ENDPOINT],
            env_float(os.environ, envvars.RDZV_WAIT_SECONDS, 300.0),
            connect=tcp_connects,
        )
    except ConfigError as exc:
        print(f"spotrain-launch: {exc}", file=sys.stderr)
        return 2
    os.makedirs(plan.env[envvars.STATE_DIR], exist_ok=True)
    start_control_server(plan)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(plan.argv[0], plan.argv, plan.env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
