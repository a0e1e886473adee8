"""Checkpoint and restore of CUDA state: DDP and FSDP2 on the GPU over NCCL (world size 1), asynchronous saves
staged through pinned host memory, a script whose default group is NCCL alone, and a restore onto the GPU of a
checkpoint taken at world size 2 (on CPU/gloo: one GPU cannot hold two NCCL ranks)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from spotrain_dev.trainer_harness import LOOPBACK, ProcessSet, free_port
from spotrain_trainer.checkpoint.storage import LocalStorage
from spotrain_trainer.config import TrainerConfig
from spotrain_trainer.session import Session

pytestmark = pytest.mark.gpu

MakeSession = Callable[..., Session]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "SPOTRAIN_JOB_NAME": "gpu",
        "POD_NAME": "gpu-0",
        "SPOTRAIN_CHECKPOINT_URI": str(tmp_path / "ckpt"),
        "SPOTRAIN_STATE_DIR": str(tmp_path / "state"),
        "SPOTRAIN_STAGING_DIR": str(tmp_path / "staging"),
        "SPOTRAIN_TERMINATION_LOG": str(tmp_path / "term" / "termination-log"),
    }


@pytest.fixture
def make_session(env: dict[str, str]) -> MakeSession:
    def make(**overrides: str) -> Session:
        cfg = TrainerConfig.from_env({**env, **overrides})
        return Session(config=cfg, install_signal_handler=False, fast_exit=False)

    return make


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 8))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, device: torch.device) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 32, generator=g).to(device)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        out[key.removeprefix("module.")] = full.detach().cpu().clone()
    return out


def test_ddp_on_cuda_async_pinned_save_and_restore(make_session: MakeSession, tmp_path: Path) -> None:
    s = make_session()
    try:
        assert s.device.type == "cuda"
        model = nn.parallel.DistributedDataParallel(net().to(s.device), device_ids=[s.device.index])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        s.restore(model=model, optimizer=opt)
        for _ in s.steps(2):
            train(model, opt, 1, s.device)
        s.checkpoint_now(asynchronous=True)
        assert s.wait_for_checkpoint() is not None
        pinned = s.checkpointer._pinned_writer
        assert pinned is not None and pinned.state_dict_cache is not None
        staged = list(_tensors(pinned.state_dict_cache))
        assert staged and all(t.device.type == "cpu" and t.is_pinned() for t in staged)
        for _ in s.steps(4):  # a second async save reuses the pinned copy with new values
            train(model, opt, 1, s.device)
        s.checkpoint_now(asynchronous=True)
        assert s.wait_for_checkpoint() is not None
        expected = full_state(model)
        s.complete()
    finally:
        s.close()

    s = make_session()
    try:
        fresh = nn.parallel.DistributedDataParallel(net().to(s.device), device_ids=[s.device.index])
        with torch.no_grad():
            for p in fresh.parameters():
                p.zero_()
        assert s.restore(model=fresh, optimizer=torch.optim.AdamW(fresh.parameters(), lr=1e-2)) == 4
        got = full_state(fresh)
        assert all(p.is_cuda for p in fresh.parameters())
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    finally:
        s.close()


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors(value)


def test_fsdp2_on_cuda_round_trip(make_session: MakeSession) -> None:
    from torch.distributed.fsdp import fully_shard

    def sharded(device: torch.device) -> nn.Module:
        model = net().to(device)
        for layer in model.children():
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        return model

    s = make_session(SPOTRAIN_CHECKPOINT_ASYNC="1", SPOTRAIN_CHECKPOINT_EVERY_STEPS="2")
    try:
        model = sharded(s.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        s.restore(model=model, optimizer=opt)
        for _ in s.steps(5):
            train(model, opt, 1, s.device)
        expected = full_state(model)
        s.complete()
    finally:
        s.close()
    s = make_session()
    try:
        fresh = sharded(s.device)
        assert s.restore(model=fresh, optimizer=torch.optim.AdamW(fresh.parameters(), lr=1e-2)) == 5
        got = full_state(fresh)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    finally:
        s.close()


def test_a_script_whose_default_group_is_nccl_alone(make_session: MakeSession, tmp_path: Path) -> None:
    device = torch.device("cuda", 0)
    dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
    try:
        s = make_session(SPOTRAIN_CHECKPOINT_EVERY_STEPS="2")
        try:
            assert s._flag_group is not None, "the flags go over a gloo group of the session's own"
            model = nn.parallel.DistributedDataParallel(net().to(device), device_ids=[0])
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            s.restore(model=model, optimizer=opt)
            for _ in s.steps(4):
                train(model, opt, 1, device)
            s.complete()
        finally:
            s.close()
    finally:
        dist.destroy_process_group()
    assert LocalStorage(tmp_path / "ckpt").committed_steps()[0] == 4


SAVE_AT_WORLD_2 = r"""
import sys
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
import spotrain_trainer as st

torch.manual_seed(0)
with st.Session(install_signal_handler=False, fast_exit=False) as session:
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 8))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    session.restore(model=model, optimizer=opt)
    g = torch.Generator().manual_seed(session.rank)
    for _ in session.steps(3):
        loss = model(torch.randn(16, 32, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    full = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    if session.rank == 0:
        torch.save(full, sys.argv[1])
"""


def test_restore_onto_the_gpu_at_another_world_size(
    make_session: MakeSession, env: dict[str, str], tmp_path: Path
) -> None:
    """Saved by two CPU ranks (FSDP2 over gloo), restored by one GPU rank (FSDP2 over NCCL): resharded on load."""
    from torch.distributed.fsdp import fully_shard

    procs = ProcessSet(tmp_path / "logs")
    expected_file = tmp_path / "expected.pt"
    port = free_port()
    try:
        running = []
        for rank in range(2):
            rank_env = procs.env(
                {
                    **env,
                    "POD_NAME": f"cpu-{rank}",
                    "SPOTRAIN_STATE_DIR": str(tmp_path / f"state{rank}"),
                    "CUDA_VISIBLE_DEVICES": "",
                    "RANK": str(rank),
                    "LOCAL_RANK": "0",
                    "WORLD_SIZE": "2",
                    "MASTER_ADDR": LOOPBACK,
                    "MASTER_PORT": str(port),
                }
            )
            argv = [sys.executable, "-c", SAVE_AT_WORLD_2, str(expected_file)]
            running.append(procs.spawn(f"cpu-{rank}", argv, env=rank_env))
        for rank, proc in enumerate(running):
            assert proc.wait(timeout=300) == 0, procs.log_text(f"cpu-{rank}")[-4000:]
    finally:
        procs.kill_all()
    expected = torch.load(expected_file)

    s = make_session()
    try:
        model = net().to(s.device)
        for layer in model.children():
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        assert s.restore(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2)) == 3
        got = full_state(model)
        assert all(v.is_cuda for v in model.state_dict().values())
        assert all(torch.equal(got[k], expected[k].cpu()) for k in expected)
    finally:
        s.close()
