"""A torchrun training script with epochs, a DataLoader and a distributed sampler, ported to the spotrain session.

The lines marked ``# spotrain`` are what porting changed (docs/trainer.md walks through it): the session replaces
``init_process_group`` and the ``torch.save`` snapshots, ``ElasticDistributedSampler`` replaces
``DistributedSampler`` (its position is checkpointed and resumes mid-epoch at any world size), and
``session.iterate(loader, epochs=...)`` replaces the two loops over epochs and batches (it calls ``set_epoch``).

Run it alone (``python examples/train_epochs.py``), under torchrun or under ``spotrain-launch``. The global batch
is the same at every world size (``--global-batch``, shared out among the ranks). Every step, rank 0 appends one
JSON line to ``--log`` (or ``$EPOCHS_LOG``): the step, the epoch, the world size and the data set indices every
rank trained on: ``{"step": 3, "epoch": 0, "world_size": 2, "indices": [...], "loss": 0.5}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import spotrain_trainer as st  # spotrain


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dataset-size", type=int, default=60)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--step-sleep", type=float, default=float(os.environ.get("EPOCHS_STEP_SLEEP", "0")))
    p.add_argument("--log", default=os.environ.get("EPOCHS_LOG"))
    return p.parse_args(argv)


def make_dataset(size: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(size, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g)
    return TensorDataset(torch.arange(size), x, y)


def log_line(path: str | None, record: dict[str, Any]) -> None:
    line = json.dumps(record)
    if not path:
        print(line, flush=True)
        return
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    with st.Session() as session:  # spotrain: instead of init_process_group
        world = session.world_size
        if args.global_batch % world:
            raise SystemExit(f"--global-batch {args.global_batch} is not divisible by the world size {world}")
        per_rank = args.global_batch // world
        dataset = make_dataset(args.dataset_size)
        sampler = st.ElasticDistributedSampler(dataset, batch_size=per_rank, shuffle=True, seed=1)  # spotrain
        loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler)
        model: nn.Module = nn.Linear(8, 1)
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
        session.restore(model=model, optimizer=optimizer, state={"sampler": sampler})  # spotrain: resume

        for indices, x, y in session.iterate(loader, epochs=args.epochs):  # spotrain: epochs and steps
            # The last step of an epoch may give ranks fewer samples: scale by the step's global sample count so
            # that DDP's gradient average is the mean over every sample of the step.
            count = torch.tensor([float(len(indices))])
            dist.all_reduce(count)
            loss_sum = (model(x) - y).pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            (loss_sum * world / count).backward()
            optimizer.step()
            total = loss_sum.detach().reshape(1)
            dist.all_reduce(total)
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, [int(i) for i in indices])
            if session.is_main:
                record = {
                    "step": session.step,
                    "epoch": sampler.epoch,
                    "world_size": world,
                    "indices": [i for part in gathered for i in part],
                    "loss": total.item() / count.item(),
                }
                log_line(args.log, record)
            if args.step_sleep:
                time.sleep(args.step_sleep)
    # Leaving the block wrote the final checkpoint and the completion marker.
    return 0


if __name__ == "__main__":
    sys.exit(main())
