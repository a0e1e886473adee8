"""spotrain-dev: run the local control plane and inject spot interruptions into it.

    spotrain-dev up                 start the devcluster in the background (make dev-up)
    spotrain-dev down               stop it (make dev-down)
    spotrain-dev nodes              list nodes with pool, zone, capacity type, readiness, taints
    spotrain-dev add-node POOL ZONE [--instance-type T]
    spotrain-dev remove-node NODE
    spotrain-dev signal NODE SIGNAL [--lead SECONDS]      (spotrain-dev signals lists them)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from spotrain_dev import topology
from spotrain_dev.cluster import REPO, DevCluster, stderr_progress
from spotrain_dev.karpenter import Karpenter
from spotrain_dev.nodes import SIGNALS, NodeSimulator

DEV_DIR = Path(os.environ.get("SPOTRAIN_DEV_DIR", REPO / ".dev"))
KUBECONFIG = DEV_DIR / "kubeconfig"
PIDFILE = DEV_DIR / "supervisor.pid"
LOG = DEV_DIR / "supervisor.log"
READY = DEV_DIR / "ready"


def _supervisor_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    """Runs the cluster in the foreground until SIGTERM or SIGINT; every component dies with this process."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    cluster = DevCluster(DEV_DIR / "cluster", topology_file=Path(args.topology))
    # Karpenter (its KWOK provider) with the NodePools of dev/karpenter/nodepools.yaml, next to the static pools:
    # both kinds of pool, as on real clusters.
    karpenter = Karpenter(cluster)
    try:
        cluster.start()
        karpenter.start()
        shutil.copy(cluster.kubeconfig, KUBECONFIG)
        cluster.write_state()
        READY.write_text(str(os.getpid()))
        while not stop.wait(1.0):
            dead = [p.name for p in [*cluster.processes, *([karpenter.process] if karpenter.process else [])]
                    if not p.alive()]
            if dead:
                stderr_progress(f"{', '.join(dead)} exited; stopping the devcluster (logs: {cluster.logs})")
                return 1
    finally:
        stderr_progress("stopping")
        karpenter.stop()
        cluster.stop()
        READY.unlink(missing_ok=True)
        KUBECONFIG.unlink(missing_ok=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    if _supervisor_pid() and READY.exists():
        print(f"devcluster already running; kubeconfig: {KUBECONFIG}")
        return 0
    DEV_DIR.mkdir(parents=True, exist_ok=True)
    READY.unlink(missing_ok=True)
    with LOG.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "spotrain_dev.cli", "--topology", args.topology, "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    PIDFILE.write_text(str(process.pid))
    shown = 0
    while not READY.exists():
        lines = LOG.read_text(errors="replace").splitlines()
        for line in lines[shown:]:
            print(line, file=sys.stderr)
        shown = len(lines)
        if process.poll() is not None:
            print(f"devcluster failed to start (exit {process.returncode}); see {LOG}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    for line in LOG.read_text(errors="replace").splitlines()[shown:]:
        print(line, file=sys.stderr)
    print(f"devcluster up; export KUBECONFIG={KUBECONFIG}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    pid = _supervisor_pid()
    if pid is None:
        print("devcluster is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    PIDFILE.unlink(missing_ok=True)
    print("devcluster stopped")
    return 0


def _simulator(args: argparse.Namespace) -> NodeSimulator:
    return NodeSimulator.from_kubeconfig(Path(args.kubeconfig), topology.load(Path(args.topology)))


def cmd_nodes(args: argparse.Namespace) -> int:
    rows = _simulator(args).list()
    columns = ["name", "pool", "zone", "instance-type", "capacity", "ready", "taints"]
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))
    return 0


def cmd_add_node(args: argparse.Namespace) -> int:
    print(_simulator(args).add(args.pool, args.zone, args.instance_type, args.name))
    return 0


def cmd_remove_node(args: argparse.Namespace) -> int:
    _simulator(args).remove(args.node)
    return 0


def cmd_signal(args: argparse.Namespace) -> int:
    _simulator(args).signal(args.node, args.signal, args.lead)
    return 0


def cmd_signals(args: argparse.Namespace) -> int:
    for s in SIGNALS.values():
        print(f"{s.name:28} {s.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spotrain-dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=str(KUBECONFIG))
    parser.add_argument("--topology", default=str(topology.DEFAULT_TOPOLOGY))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up").set_defaults(func=cmd_up)
    sub.add_parser("serve").set_defaults(func=cmd_serve)
    sub.add_parser("down").set_defaults(func=cmd_down)
    sub.add_parser("nodes").set_defaults(func=cmd_nodes)
    sub.add_parser("signals").set_defaults(func=cmd_signals)
    add = sub.add_parser("add-node")
    add.add_argument("pool")
    add.add_argument("zone")
    add.add_argument("--instance-type")
    add.add_argument("--name")
    add.set_defaults(func=cmd_add_node)
    remove = sub.add_parser("remove-node")
    remove.add_argument("node")
    remove.set_defaults(func=cmd_remove_node)
    sig = sub.add_parser("signal")
    sig.add_argument("node")
    sig.add_argument("signal", choices=sorted(SIGNALS))
    sig.add_argument("--lead", type=int, default=120,
                     help="seconds until the deadline, for signals whose emitter writes one (spotrain-agent); "
                     "NTH, Karpenter, GKE, AKS and cluster-autoscaler write none")
    sig.set_defaults(func=cmd_signal)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
