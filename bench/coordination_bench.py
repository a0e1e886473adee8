"""Per-step cost of the trainer's notice/checkpoint coordination: one ``coordinate_flags`` all-reduce (4 flags, MAX)
over the session's gloo flag group, at world sizes 2 and 8 on loopback (one process per rank).

    python bench/coordination_bench.py [--world-sizes 2,8] [--iterations 500] [--output bench/results/coordination.json]

Output (JSON): ``{"iterations": N, "backend": "gloo", "world_size_2": {"p50_us", "p99_us", "mean_us", "max_us"},
"world_size_8": {...}}``; each entry is the distribution of one call's duration over every call of every rank.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer"))

from spotrain_dev.trainer_harness import LOOPBACK, free_port  # noqa: E402

WARMUP = 30


def worker(iterations: int, out: Path) -> None:
    import torch
    import torch.distributed as dist

    from spotrain_trainer.notice import coordinate_flags

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    # What the session does when the script's default group cannot reduce CPU tensors (NCCL): its own gloo group.
    group = dist.new_group(backend="gloo")
    durations = []
    for i in range(WARMUP + iterations):
        t0 = time.perf_counter()
        coordinate_flags([0.0, float(i % 7 == 0), 0.0, 0.0], group=group)
        if i >= WARMUP:
            durations.append(time.perf_counter() - t0)
    out.write_text(json.dumps(durations))
    dist.destroy_process_group()


def measure(world_size: int, iterations: int, workdir: Path) -> dict[str, float]:
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port))
        env.setdefault("OMP_NUM_THREADS", "1")
        out = workdir / f"w{world_size}-r{rank}.json"
        argv = [sys.executable, __file__, "--worker", "--iterations", str(iterations), "--output", str(out)]
        procs.append((subprocess.Popen(argv, env=env), out))
    samples: list[float] = []
    for proc, out in procs:
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"a rank of world size {world_size} exited with {proc.returncode}")
        samples.extend(json.loads(out.read_text()))
    samples.sort()
    us = [s * 1e6 for s in samples]
    return {
        "p50_us": round(statistics.median(us), 1),
        "p99_us": round(us[min(len(us) - 1, int(0.99 * len(us)))], 1),
        "mean_us": round(statistics.fmean(us), 1),
        "max_us": round(us[-1], 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[2, 8])
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "coordination.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.iterations, Path(args.output))
        return 0
    report: dict[str, object] = {"iterations": args.iterations, "backend": "gloo"}
    with tempfile.TemporaryDirectory(prefix="spotrain-coord-bench-") as tmp:
        for world_size in args.world_sizes:
            report[f"world_size_{world_size}"] = measure(world_size, args.iterations, Path(tmp))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
