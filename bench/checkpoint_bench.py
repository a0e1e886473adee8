"""Checkpoint benchmark: training stall of asynchronous vs synchronous checkpoints, and notice-to-durable
time, for 256 MiB and 1 GiB of state, on local disk and on a moto S3 server on 127.0.0.1.

    python bench/checkpoint_bench.py [--sizes-mb 256,1024] [--reps 2] [--storage local,s3]

Prints a table and writes bench/results/checkpoint.json. Figures, not assertions: they depend on the machine
(CPU count, disk, memory bandwidth) and moto is an in-memory S3 on loopback, so S3 figures show the cost of
the staging + upload + verify path, not the throughput of real S3.

What is measured (one process, a world of one, gloo; the model holds the given amount of float32 state):

* ``sync stall``: a synchronous checkpoint; training is stopped for all of it (= its duration).
* ``async stall``: ``dcp.async_save``; training is stopped only while the state dict is snapshotted to CPU.
  ``async durable``: from the start until the commit marker is written.
* ``notice->durable``: SIGTERM is delivered to the process; the signal handler sets a flag, the next step
  boundary agrees on it (all-reduce), a synchronous checkpoint is written and committed, the status file
  reports it. Measured from the signal to the moment the worker is ready to exit (75).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer"))  # works without the editable install too

from spotrain_dev.trainer_harness import MOTO_ENV, ProcessSet, free_port, start_moto  # noqa: E402
from spotrain_trainer.config import TrainerConfig  # noqa: E402
from spotrain_trainer.session import CheckpointedOnNotice, Session  # noqa: E402

MiB = 1024 * 1024


class Ballast(nn.Module):
    """``size_mb`` MiB of float32 parameters in 16 tensors (no optimizer: the state is exactly this size)."""

    def __init__(self, size_mb: int) -> None:
        super().__init__()
        per = size_mb * MiB // 4 // 16
        self.chunks = nn.ParameterList(nn.Parameter(torch.randn(per), requires_grad=False) for _ in range(16))


def make_session(uri: str, work: Path, extra: dict[str, str]) -> Session:
    env = {
        "SPOTRAIN_JOB_NAME": "bench",
        "POD_NAME": "bench-0",
        "SPOTRAIN_CHECKPOINT_URI": uri,
        "SPOTRAIN_STATE_DIR": str(work / "state"),
        "SPOTRAIN_STAGING_DIR": str(work / "staging"),
        "SPOTRAIN_TERMINATION_LOG": str(work / "no-such-dir" / "termination-log"),
        "SPOTRAIN_KEEP_LAST": "1",
        "SPOTRAIN_CHECKPOINT_INTERVAL": "1000000",
        "SPOTRAIN_CHECKPOINT_MIN_INTERVAL": "1",
        "SPOTRAIN_CHECKPOINT_MAX_INTERVAL": "1000000",
        **extra,
    }
    return Session(config=TrainerConfig.from_env(env), install_signal_handler=True, fast_exit=False)


def measure(kind: str, size_mb: int, uri: str, work: Path, extra: dict[str, str]) -> dict[str, float]:
    """One measurement in a fresh session (a fresh process group), checkpoints under a fresh prefix."""
    model = Ballast(size_mb)
    session = make_session(uri, work, extra)
    try:
        session.restore(model=model)
        session.step = 1  # pretend one step ran: there is something new to save
        if kind == "sync":
            t0 = time.perf_counter()
            rec = session.checkpoint_now("bench")
            total = time.perf_counter() - t0
            assert rec is not None
            return {"stall_s": total, "durable_s": total, "bytes": rec.bytes}
        if kind == "async":
            t0 = time.perf_counter()
            assert session.checkpoint_now("bench", asynchronous=True) is None
            stall = time.perf_counter() - t0
            rec = session.wait_for_checkpoint()
            durable = time.perf_counter() - t0
            assert rec is not None
            return {"stall_s": stall, "durable_s": durable, "bytes": rec.bytes}
        if kind == "notice":
            t0 = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)
            try:
                for _ in session.steps(1_000_000):
                    pass
            except CheckpointedOnNotice:
                elapsed = time.perf_counter() - t0
            else:
                raise RuntimeError("no checkpoint on notice")
            last = session.status.get("last_checkpoint")
            return {"notice_to_durable_s": elapsed, "bytes": last["bytes"]}
        raise ValueError(kind)
    finally:
        session.close()
        del model


def run(args: argparse.Namespace) -> dict[str, Any]:
    work_root = Path(tempfile.mkdtemp(prefix="spotrain-bench-", dir=args.workdir))
    procs = ProcessSet(work_root / "logs")
    results: list[dict[str, Any]] = []
    try:
        targets: list[tuple[str, str, dict[str, str]]] = []
        if "local" in args.storage:
            targets.append(("local", str(work_root / "local-ckpt"), {}))
        if "s3" in args.storage:
            import boto3

            port = free_port()
            start_moto(procs, port)
            endpoint = f"http://127.0.0.1:{port}"
            os.environ.update(MOTO_ENV)
            client = boto3.client("s3", endpoint_url=endpoint, region_name=MOTO_ENV["AWS_DEFAULT_REGION"])
            client.create_bucket(Bucket="bench")
            targets.append(("s3-moto", "s3://bench/ckpt", {"SPOTRAIN_S3_ENDPOINT_URL": endpoint}))
        for size in args.sizes_mb:
            for storage_name, base_uri, extra in targets:
                row: dict[str, Any] = {"size_mb": size, "storage": storage_name}
                samples: dict[str, list[float]] = {}
                for rep in range(args.reps):
                    for kind in ("sync", "async", "notice"):
                        uri = f"{base_uri}/{kind}-{rep}-{uuid.uuid4().hex[:6]}"
                        work = work_root / f"w-{size}-{storage_name}-{kind}-{rep}"
                        out = measure(kind, size, uri, work, extra)
                        for key, value in out.items():
                            samples.setdefault(f"{kind}_{key}", []).append(float(value))
                        shutil.rmtree(work, ignore_errors=True)
                        if storage_name == "local":
                            shutil.rmtree(uri, ignore_errors=True)
                        else:
                            _empty_bucket(client, "bench")
                        print(f"  {size} MiB {storage_name:8s} {kind:6s} rep {rep}: {out}", flush=True)
                for key, values in samples.items():
                    row[key] = statistics.median(values)
                row["samples"] = samples
                results.append(row)
    finally:
        procs.kill_all()
        shutil.rmtree(work_root, ignore_errors=True)
    return {
        "benchmark": "checkpoint",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "reps": args.reps,
        "statistic": "median",
        "results": results,
    }


def _empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'state':>8} {'storage':>8} | {'sync stall':>10} | {'async stall':>11} {'async durable':>13} | "
        f"{'notice->durable':>15} | {'stall saved':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        saved = 1.0 - r["async_stall_s"] / r["sync_stall_s"] if r["sync_stall_s"] else 0.0
        lines.append(
            f"{r['size_mb']:>5} MiB {r['storage']:>8} | {r['sync_stall_s']:>9.2f}s | {r['async_stall_s']:>10.2f}s "
            f"{r['async_durable_s']:>12.2f}s | {r['notice_notice_to_durable_s']:>14.2f}s | {saved:>10.0%}"
        )
    m = report["machine"]
    lines.append(f"(median of {report['reps']}; {m['cpus']} CPUs, torch {m['torch']}, load {m['load_average'][0]:.1f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024])
    p.add_argument("--storage", type=lambda s: s.split(","), default=["local", "s3"])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where checkpoints and staging go (default: the temp dir)")
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "checkpoint.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    report = run(args)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
