"""The session as a user's script meets it, in-process as a world of one: a default group without a CPU backend
(what ``init_process_group("nccl")`` gives), state objects checked at restore, manual checkpoints, a
checkpoint that cannot be loaded, the data-loader iteration helper and its misuse, and the second save on a
SIGTERM after an operator-requested checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from spotrain_protocol import REQUEST_FILE
from spotrain_trainer.checkpoint.commit import CheckpointError
from spotrain_trainer.checkpoint.storage import LocalStorage
from spotrain_trainer.constants import EXIT_CHECKPOINTED_ON_NOTICE
from spotrain_trainer.data import ElasticDistributedSampler
from spotrain_trainer.notice import reduces_cpu_tensors, second_save_fits
from spotrain_trainer.session import CheckpointedOnNotice, Session
from spotrain_trainer.statefiles import atomic_write_json, read_json

MakeSession = Callable[..., Session]
CUDA_ONLY = "spotrain_cuda_only"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The trainer unit tests' environment, with synchronous checkpoints."""
    return {**env, "SPOTRAIN_CHECKPOINT_ASYNC": "0"}


def model_and_optimizer(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def status(tmp_path: Path) -> dict[str, Any]:
    data = read_json(tmp_path / "state" / "status.json")
    assert data is not None
    return data


# ------------------------------------------------------------------------------------ NCCL-only default group
def _create_cuda_only(store: Any, rank: int, world_size: int, timeout: timedelta) -> Any:
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


@pytest.fixture
def cuda_only_default_group() -> Iterator[None]:
    """A default group that, like NCCL's, has a backend for CUDA tensors only: reducing a CPU tensor on it
    fails (``No backend type associated with device type cpu``)."""
    if CUDA_ONLY.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(CUDA_ONLY, _create_cuda_only, devices=["cuda"])
    dist.init_process_group(CUDA_ONLY, store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert not reduces_cpu_tensors()
        with pytest.raises(RuntimeError):
            dist.all_reduce(torch.zeros(1))
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("cuda_only_default_group")
def test_a_default_group_without_a_cpu_backend_does_not_break_the_session(
    make_session: MakeSession, tmp_path: Path
) -> None:
    model, opt = model_and_optimizer()
    s = make_session(SPOTRAIN_CHECKPOINT_EVERY_STEPS="2")
    try:
        s.restore(model=model, optimizer=opt)
        for _ in s.steps(5):
            pass
        s.complete()
    finally:
        s.close()
    assert dist.is_initialized(), "the script's own group is left alone"
    assert LocalStorage(tmp_path / "ckpt").committed_steps() == [5, 4, 2]


# ------------------------------------------------------------------------------------------- restore checks
def test_a_distributed_sampler_as_state_fails_at_restore_naming_the_key(make_session: MakeSession) -> None:
    data = TensorDataset(torch.arange(8.0))
    sampler: DistributedSampler[Any] = DistributedSampler(data, num_replicas=1, rank=0)
    s = make_session()
    try:
        with pytest.raises(TypeError, match=r"state\['sampler'\] is a DistributedSampler.*ElasticDistributedSampler"):
            s.restore(state={"sampler": sampler})
        with pytest.raises(TypeError, match=r"rank_state\['it'\] is a list_iterator"):
            s.restore(rank_state={"it": iter([1])})
    finally:
        s.close()


def test_a_checkpoint_that_does_not_load_falls_back_and_names_itself(make_session: MakeSession, tmp_path: Path) -> None:
    model, opt = model_and_optimizer()
    s = make_session()
    try:
        s.restore(model=model, optimizer=opt)
        for _ in s.steps(2):
            pass
        s.complete()
    finally:
        s.close()
    # A model with a parameter the checkpoint lacks: DCP raises CheckpointException (a BaseException).
    bigger = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    s = make_session()
    try:
        with pytest.raises(CheckpointError) as info:
            s.restore(model=bigger)
    finally:
        s.close()
    message = str(info.value)
    assert f"{tmp_path / 'ckpt'}/step-000000002" in message and "CheckpointException" in message


# -------------------------------------------------------------------------------------- manual checkpoints
def test_checkpoint_now_is_counted_as_manual_and_reported(make_session: MakeSession, tmp_path: Path) -> None:
    model, opt = model_and_optimizer()
    s = make_session()
    try:
        s.restore(model=model, optimizer=opt)
        for _ in s.steps(3):
            pass
        record = s.checkpoint_now()
    finally:
        s.close()
    assert record is not None and record.step == 3
    st = status(tmp_path)
    assert st["checkpoints_total"]["manual"] == 1 and st["checkpoints_total"]["notice"] == 0
    assert st["last_checkpoint"]["step"] == 3 and st["last_checkpoint"]["reason"] == "manual"


# -------------------------------------------------------------------------------------------- iterate()
class Recorder:
    """The samples the training loop saw, kept as state so that a resumed run continues the record."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"seen": json.dumps(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = json.loads(state["seen"])


def make_loader(n: int, batch: int) -> tuple[DataLoader[Any], ElasticDistributedSampler]:
    data = TensorDataset(torch.arange(n))
    sampler = ElasticDistributedSampler(data, batch_size=batch, num_replicas=1, rank=0, seed=1)
    return DataLoader(data, batch_size=batch, sampler=sampler), sampler


def test_iterate_owns_steps_epochs_and_the_data_position(make_session: MakeSession, tmp_path: Path) -> None:
    loader, sampler = make_loader(10, 4)  # 3 steps per epoch (4, 4, 2)
    recorder = Recorder()
    s = make_session()
    try:
        s.restore(state={"sampler": sampler, "recorder": recorder})
        with pytest.raises(CheckpointedOnNotice) as info:
            for batch in s.iterate(loader, epochs=3):
                recorder.seen.append([int(i) for i in batch[0]])
                if s.step == 4:  # the 5th step (the 2nd of epoch 1); the notice is taken at the next boundary
                    s.notice._on_sigterm(15, None)
    finally:
        s.close()
    assert info.value.code == EXIT_CHECKPOINTED_ON_NOTICE and info.value.step == 5
    assert (sampler.epoch, sampler.consumed) == (1, 8)

    loader, sampler = make_loader(10, 4)
    recorder = Recorder()
    s = make_session()
    try:
        assert s.restore(state={"sampler": sampler, "recorder": recorder}) == 5
        for batch in s.iterate(loader, epochs=3):
            recorder.seen.append([int(i) for i in batch[0]])
        assert s.step == 9
        s.complete()
    finally:
        s.close()
    epochs = [recorder.seen[0:3], recorder.seen[3:6], recorder.seen[6:9]]
    for epoch in epochs:
        assert sorted(i for batch in epoch for i in batch) == list(range(10)), "every sample once per epoch"
    assert epochs[0] != epochs[1], "a new order every epoch"
    assert status(tmp_path)["checkpoints_total"]["final"] == 1


def test_zip_of_a_loader_and_steps_fails_loudly(make_session: MakeSession) -> None:
    loader, sampler = make_loader(6, 3)
    s = make_session()
    try:
        s.restore(state={"sampler": sampler})
        for _batch, _step in zip(loader, s.steps(100), strict=False):
            pass
        with pytest.raises(RuntimeError, match=r"step 1 of an earlier .*session.iterate\(loader"):
            for _batch, _step in zip(loader, s.steps(100), strict=False):
                pass
    finally:
        s.close()


def test_iterate_refuses_a_sampler_it_cannot_checkpoint(make_session: MakeSession) -> None:
    loader, _ = make_loader(6, 3)
    plain = DataLoader(TensorDataset(torch.arange(6)), batch_size=3)
    s = make_session()
    try:
        s.restore()
        with pytest.raises(TypeError, match="ElasticDistributedSampler"):
            next(s.iterate(plain, epochs=1))
        with pytest.raises(RuntimeError, match=r"restore\(\.\.\., state="):
            next(s.iterate(loader, epochs=1))
    finally:
        s.close()


# --------------------------------------------------------------------------- second save after a request
def request(tmp_path: Path, request_id: str, deadline_in: float) -> None:
    deadline = (datetime.now(UTC) + timedelta(seconds=deadline_in)).isoformat().replace("+00:00", "Z")
    atomic_write_json(
        tmp_path / "state" / REQUEST_FILE, {"id": request_id, "reason": "spot-interruption", "deadline": deadline}
    )


# A deadline already past when the SIGTERM comes: that notice is over, and this SIGTERM saves like any other.
@pytest.mark.parametrize(("deadline_in", "second_save"), [(3600.0, True), (1.0, False), (-5.0, True)])
def test_sigterm_after_a_requested_checkpoint_saves_again_only_when_it_fits(
    make_session: MakeSession, tmp_path: Path, deadline_in: float, second_save: bool
) -> None:
    model, opt = model_and_optimizer()
    s = make_session()
    try:
        s.restore(model=model, optimizer=opt)
        with pytest.raises(CheckpointedOnNotice) as info:
            for step in s.steps(100):
                if step == 2:
                    request(tmp_path, "r1", deadline_in)
                if step == 5:
                    s.notice._on_sigterm(15, None)
    finally:
        s.close()
    committed = LocalStorage(tmp_path / "ckpt").committed_steps()
    st = status(tmp_path)
    assert st["handled_request_id"] == "r1"
    if second_save:
        assert committed == [6, 3] and info.value.step == 6 and st["checkpoints_total"]["notice"] == 2
    else:
        assert committed == [3] and info.value.step == 3 and st["checkpoints_total"]["notice"] == 1
        assert st["last_checkpoint"]["step"] == 3


def test_second_save_fits_only_with_room_to_spare() -> None:
    assert second_save_fits(deadline_unix=1000.0, now_unix=900.0, estimate_seconds=10.0)
    assert not second_save_fits(deadline_unix=1000.0, now_unix=980.0, estimate_seconds=10.0)
    assert not second_save_fits(deadline_unix=None, now_unix=0.0, estimate_seconds=1.0)
    assert not second_save_fits(deadline_unix=1000.0, now_unix=0.0, estimate_seconds=0.0)
