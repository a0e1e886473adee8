"""A tiny, deterministic training job on CPU that uses the spotrain session API.

Run it alone (``python examples/train_tiny.py --steps 50``) or under ``spotrain-launch`` / torchrun. The global
batch is the same at every world size (each rank takes ``global_batch // world_size`` samples) and sample
``i`` of the synthetic data set is always the same, in the same order, so the loss sequence of a run that is
interrupted and resumed at another world size matches an uninterrupted run's up to floating-point summation
order.

Every step, rank 0 appends one JSON line to ``--loss-log`` (or ``$TINY_LOSS_LOG``):
``{"step": 12, "loss": 0.123, "world_size": 2, "restart": 0, "pod": "...", "time": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import spotrain_trainer as st

IN_FEATURES = 16
HIDDEN = 64


def make_dataset(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of a fixed random teacher network, plus a little noise: sample i is fixed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, IN_FEATURES, generator=g)
    w1 = torch.randn(IN_FEATURES, 8, generator=g)
    w2 = torch.randn(8, 1, generator=g)
    y = torch.tanh(x @ w1) @ w2 + 0.01 * torch.randn(size, 1, generator=g)
    return x, y


def make_model(extra_params: int = 0) -> nn.Module:
    model = nn.Sequential(
        nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1)
    )
    if extra_params:
        # Ballast to make the checkpoint bigger (demo/bench); it takes no part in the loss.
        model.register_parameter("ballast", nn.Parameter(torch.zeros(extra_params), requires_grad=False))
    return model


class GlobalSampler:
    """Position in the global sample order; rank r of w takes its contiguous slice of each global batch."""

    def __init__(self, dataset_size: int, global_batch: int) -> None:
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.position = 0

    def indices(self, rank: int, world_size: int) -> torch.Tensor:
        if self.global_batch % world_size:
            raise SystemExit(f"global batch {self.global_batch} is not divisible by world size {world_size}")
        per_rank = self.global_batch // world_size
        start = self.position + rank * per_rank
        return (start + torch.arange(per_rank)) % self.dataset_size

    def advance(self) -> None:
        self.position += self.global_batch

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--global-batch", type=int, default=24)
    p.add_argument("--dataset-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", choices=["ddp", "fsdp", "none"], default="ddp")
    p.add_argument("--loss-log", default=os.environ.get("TINY_LOSS_LOG"))
    p.add_argument("--step-sleep", type=float, default=float(os.environ.get("TINY_STEP_SLEEP", "0")))
    p.add_argument(
        "--hold-at-step", type=int, default=None, help="hold before this step while --hold-file exists (tests)"
    )
    p.add_argument("--hold-file", default=None)
    p.add_argument("--ballast", type=int, default=0, help="extra float32 parameters (bigger checkpoints)")
    p.add_argument("--checkpoint-every-steps", type=int, default=None)
    return p.parse_args(argv)


def log_line(path: str | None, obj: dict[str, Any]) -> None:
    if not path:
        print(json.dumps(obj), flush=True)
        return
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    x_all, y_all = make_dataset(args.dataset_size, seed=1234)

    with st.Session(checkpoint_every_steps=args.checkpoint_every_steps) as session:
        rank, world = session.rank, session.world_size
        if args.parallel == "none" and world > 1:
            raise SystemExit("--parallel none needs a world of one")
        model: nn.Module = make_model(args.ballast)
        if args.parallel == "ddp":
            model = nn.parallel.DistributedDataParallel(model)
        elif args.parallel == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in model.modules():
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.8)
        sampler = GlobalSampler(args.dataset_size, args.global_batch)
        start = session.restore(model=model, optimizer=optimizer, scheduler=scheduler, state={"sampler": sampler})
        if sampler.position != start * args.global_batch:
            raise SystemExit(f"sampler position {sampler.position} does not match step {start}")
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        pod = os.environ.get("POD_NAME", "")
        if rank == 0:
            start_event = {"event": "start", "step": start, "world_size": world, "restart": restart, "pod": pod}
            log_line(args.loss_log, start_event)

        for step in session.steps(args.steps):
            if args.hold_at_step is not None and step == args.hold_at_step and args.hold_file:
                held = False
                while Path(args.hold_file).exists() and not session.notice_pending:
                    if not held and rank == 0:
                        log_line(args.loss_log, {"event": "hold", "step": step, "world_size": world, "pod": pod})
                    held = True
                    time.sleep(0.05)
            idx = sampler.indices(rank, world)
            x, y = x_all[idx], y_all[idx]
            pred = model(x)
            per_sample = (pred - y).pow(2).squeeze(1)
            loss = per_sample.mean()  # the local mean; DDP/FSDP average gradients over ranks = global mean
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sampler.advance()
            total = per_sample.detach().sum().reshape(1)
            dist.all_reduce(total)
            if rank == 0:
                log_line(
                    args.loss_log,
                    {
                        "step": step,
                        "loss": total.item() / args.global_batch,
                        "world_size": world,
                        "restart": restart,
                        "pod": pod,
                        "time": time.time(),
                    },
                )
            if args.step_sleep:
                time.sleep(args.step_sleep)
        final_step = session.step
    # Leaving the block wrote the final checkpoint, the completion marker and the termination message.
    if rank == 0:
        log_line(args.loss_log, {"event": "done", "step": final_step, "world_size": world, "pod": pod})
    return 0


if __name__ == "__main__":
    sys.exit(main())
