"""The session API in-process, as a world of one (gloo over a HashStore): save/restore of every kind of state,
checkpoint on notice, completion, retention, and fallback past damaged checkpoints."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from spotrain_trainer.checkpoint.commit import CheckpointError
from spotrain_trainer.checkpoint.storage import LocalStorage
from spotrain_trainer.session import Session
from spotrain_trainer.statefiles import atomic_write_json, read_json

MakeSession = Callable[..., Session]


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = int(state["value"])


def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def train_step(model: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> None:
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_state_round_trip(make_session: MakeSession, tmp_path: Path) -> None:
    model, opt, sched = build(0)
    data = {"position": 0}
    counter = Counter()
    s = make_session()
    try:
        start = s.restore(model=model, optimizer=opt, scheduler=sched, state={"data": data}, rank_state={"c": counter})
        assert start == 0
        for _ in s.steps(3):
            train_step(model, opt, sched)
            data["position"] += 8
            counter.value += 1
        random.seed(1234)
        torch.manual_seed(99)
        record = s.checkpoint_now()
        assert record is not None and record.step == 3 and record.world_size == 1
        expected_py, expected_torch = random.random(), torch.rand(3)
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        saved_opt = opt.state_dict()
    finally:
        s.close()

    model2, opt2, sched2 = build(1)  # different weights
    data2 = {"position": -1}
    counter2 = Counter()
    random.seed(0)
    s = make_session()
    try:
        start = s.restore(
            model=model2, optimizer=opt2, scheduler=sched2, state={"data": data2}, rank_state={"c": counter2}
        )
        assert start == 3
        assert s.step == 3 and s.restored_step == 3
        for k, v in model2.state_dict().items():
            assert torch.equal(v, saved[k]), k
        st = opt2.state_dict()["state"]
        for idx, entry in saved_opt["state"].items():
            assert torch.equal(st[idx]["exp_avg"], entry["exp_avg"]) and float(st[idx]["step"]) == float(entry["step"])
        assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
        assert data2 == {"position": 24} and counter2.value == 3
        assert random.random() == expected_py, "python RNG restored (per-rank key)"
        assert torch.equal(torch.rand(3), expected_torch), "torch RNG restored (per-rank key)"
        assert list(s.steps(3)) == []
    finally:
        s.close()


def test_checkpoint_request_takes_a_checkpoint_and_trains_on(make_session: MakeSession, tmp_path: Path) -> None:
    """An operator request alone makes the state durable and training goes on; the exit (75) comes with the
    eviction's SIGTERM (covered by the SIGTERM tests), so no doomed agent rejoins the next round."""
    model, opt, sched = build(0)
    atomic_write_json(tmp_path / "state" / "request.json", {"id": "req-9", "reason": "spot-itn", "deadline": None})
    steps_done = []
    with make_session() as s:
        s.restore(model=model, optimizer=opt, scheduler=sched)
        for step in s.steps(10):
            if step == 0:  # the request was there before the first step: it is durable already
                marker = LocalStorage(tmp_path / "ckpt").read_commit(0)
                assert marker is not None and marker.request_id == "req-9" and marker.reason == "notice:spot-itn"
                status = read_json(tmp_path / "state" / "status.json")
                assert status is not None and status["handled_request_id"] == "req-9"
                assert status["last_checkpoint"]["request_id"] == "req-9" and status["last_checkpoint"]["step"] == 0
            train_step(model, opt, sched)
            steps_done.append(step)
    assert steps_done == list(range(10))
    status = read_json(tmp_path / "state" / "status.json")
    assert status is not None and status["checkpoints_total"]["notice"] == 1 and status["completed"] is True


def test_completion(make_session: MakeSession, tmp_path: Path) -> None:
    (tmp_path / "term").mkdir()
    model, opt, sched = build(0)
    with make_session() as s:
        s.restore(model=model, optimizer=opt, scheduler=sched)
        for _ in s.steps(4):
            train_step(model, opt, sched)
    message = json.loads((tmp_path / "term" / "termination-log").read_text())
    assert message["spotrain"] == "completed" and message["step"] == 4
    # The operator takes the final checkpoint from here: the control endpoint is gone once the pod has exited.
    assert message["checkpoint"]["step"] == 4 and message["checkpoint"]["uri"].endswith("step-000000004")
    storage = LocalStorage(tmp_path / "ckpt")
    assert storage.committed_steps() == [4]
    completed = storage.read_completed()
    assert completed is not None and json.loads(completed)["step"] == 4
    status = read_json(tmp_path / "state" / "status.json")
    assert status is not None and status["phase"] == "completed" and status["completed"] is True
    assert status["last_checkpoint"]["step"] == 4 and status["last_checkpoint"]["request_id"] is None


def test_explicit_async_checkpoint(make_session: MakeSession, tmp_path: Path) -> None:
    model, opt, sched = build(0)
    s = make_session()
    try:
        s.restore(model=model, optimizer=opt, scheduler=sched)
        for _ in s.steps(2):
            train_step(model, opt, sched)
        assert s.checkpoint_now(asynchronous=True) is None
        record = s.wait_for_checkpoint()
        assert record is not None and record.step == 2 and record.reason == "manual"
        assert record.stall_seconds <= record.duration_seconds
        assert s.checkpoint_now() is record, "nothing new to save: the committed record"
        assert s.wait_for_checkpoint() is None
    finally:
        s.close()
    assert LocalStorage(tmp_path / "ckpt").committed_steps() == [2]


def test_no_termination_log_without_its_directory(make_session: MakeSession, tmp_path: Path) -> None:
    with make_session() as s:
        list(s.steps(1))
    assert not (tmp_path / "term").exists()


def test_async_regular_checkpoints_and_retention(make_session: MakeSession, tmp_path: Path) -> None:
    model, opt, sched = build(0)
    with make_session(SPOTRAIN_CHECKPOINT_EVERY_STEPS="2", SPOTRAIN_KEEP_LAST="2") as s:
        s.restore(model=model, optimizer=opt, scheduler=sched)
        for _ in s.steps(12):
            train_step(model, opt, sched)
            s.checkpointer.wait()  # let each async checkpoint finish so that all of them are taken
        status = s.status_snapshot()
    assert status["checkpoints_total"]["regular"] == 5  # steps 2, 4, 6, 8, 10
    assert LocalStorage(tmp_path / "ckpt").committed_steps() == [12, 10]
    assert status["last_checkpoint"]["stall_seconds"] <= status["last_checkpoint"]["duration_seconds"]


def test_fallback_past_damaged_checkpoint_and_error_when_none_loads(make_session: MakeSession, tmp_path: Path) -> None:
    model, opt, sched = build(0)
    s = make_session(SPOTRAIN_CHECKPOINT_ASYNC="0", SPOTRAIN_CHECKPOINT_EVERY_STEPS="2")
    try:
        s.restore(model=model, optimizer=opt, scheduler=sched)
        for _ in s.steps(4):
            train_step(model, opt, sched)
        s.checkpoint_now()
    finally:
        s.close()
    storage = LocalStorage(tmp_path / "ckpt")
    assert storage.committed_steps() == [4, 2]
    shard = storage.root / "step-000000004" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-10])

    s = make_session()
    try:
        assert s.restore(model=build(0)[0]) == 2
    finally:
        s.close()
    shard2 = storage.root / "step-000000002" / "__0_0.distcp"
    shard2.write_bytes(b"\0" * shard2.stat().st_size)
    s = make_session()
    try:
        with pytest.raises(CheckpointError, match="none could be loaded"):
            s.restore(model=build(0)[0])
    finally:
        s.close()
