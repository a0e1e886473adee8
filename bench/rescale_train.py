"""examples/train_tiny.py's model and data with a timeline: when each phase of a worker's start ended.

Used by bench/rescale_bench.py. Every worker process appends JSON lines to ``--timeline``:
``process_start`` (first line of the script, before torch is imported), ``imported``, ``session`` (process
group and storage ready), ``restored`` (the checkpoint loaded; ``step`` is where training resumes); rank 0 adds a
``step`` line per step with its world size. Times are ``time.time()``.
"""

from __future__ import annotations

import time

STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from train_tiny import GlobalSampler, make_dataset, make_model  # noqa: E402

import spotrain_trainer as st  # noqa: E402


def record(path: str, event: str, **fields: Any) -> None:
    line = {"event": event, "time": time.time(), "pod": os.environ.get("POD_NAME", ""),
            "rank": int(os.environ.get("RANK", "0")), "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            **fields}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--timeline", required=True)
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--step-sleep", type=float, default=0.05)
    p.add_argument("--global-batch", type=int, default=24)
    args = p.parse_args()
    record(args.timeline, "process_start", time=STARTED)
    record(args.timeline, "imported")
    torch.set_num_threads(1)
    x_all, y_all = make_dataset(4096, seed=1234)
    with st.Session() as session:
        rank, world = session.rank, session.world_size
        record(args.timeline, "session", world_size=world)
        model: nn.Module = nn.parallel.DistributedDataParallel(make_model())
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        sampler = GlobalSampler(4096, args.global_batch)
        start = session.restore(model=model, optimizer=optimizer, state={"sampler": sampler})
        record(args.timeline, "restored", step=start, world_size=world)
        for step in session.steps(args.steps):
            idx = sampler.indices(rank, world)
            loss = (model(x_all[idx]) - y_all[idx]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sampler.advance()
            total = loss.detach().reshape(1)
            dist.all_reduce(total)
            if rank == 0:
                record(args.timeline, "step", step=step, world_size=world)
            if args.step_sleep:
                time.sleep(args.step_sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
