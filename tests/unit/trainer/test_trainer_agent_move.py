"""The agents follow a moved rendezvous store (spotrain_trainer.agent.MovableRendezvous): once the control server
recorded a move, the agent sees a node waiting (which makes torchrun restart its workers) and its next rendezvous
forms on the new store, under the new round's id, in the same process."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from torch.distributed.elastic.rendezvous import RendezvousParameters

from spotrain_dev.trainer_harness import LOOPBACK, free_port
from spotrain_protocol import RENDEZVOUS_FILE, RendezvousMove
from spotrain_trainer.agent import RDZV_BACKEND, RendezvousHandlers, recorded_move
from spotrain_trainer.server import ConflictError, ControlState


def _store(port: int) -> dist.TCPStore:
    return dist.TCPStore(LOOPBACK, port, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False)


def _params(port: int, run_id: str) -> RendezvousParameters:
    return RendezvousParameters(backend=RDZV_BACKEND, endpoint=f"{LOOPBACK}:{port}", run_id=run_id, min_nodes=2,
                                max_nodes=2, is_host="false", last_call_timeout="1", join_timeout="60")


def _rendezvous_all(handlers: list[Any]) -> list[Any]:
    infos: list[Any] = [None] * len(handlers)
    errors: list[BaseException] = []

    def join(i: int) -> None:
        try:
            infos[i] = handlers[i].next_rendezvous()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=join, args=(i,)) for i in range(len(handlers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return infos


def test_a_recorded_move_restarts_the_round_on_the_new_store(tmp_path: Path) -> None:
    old_port, new_port = free_port(), free_port()
    old_store, new_store = _store(old_port), _store(new_port)
    controls = [ControlState(tmp_path / f"pod{i}", job="j", pod=f"pod{i}") for i in range(2)]
    agents = [RendezvousHandlers(c.rendezvous_path).create(_params(old_port, "job-g1")) for c in controls]
    _rendezvous_all(agents)
    assert [a.num_nodes_waiting() for a in agents] == [0, 0]

    move = RendezvousMove(id="job-g2", endpoint=f"{LOOPBACK}:{new_port}", round=2)
    for c in controls:  # what POST /rendezvous does in each pod
        assert c.move_rendezvous(move)["accepted"]
    assert [a.num_nodes_waiting() for a in agents] == [1, 1], "a recorded move reads as a membership change"

    infos = _rendezvous_all(agents)
    assert sorted(i.rank for i in infos) == [0, 1] and {i.world_size for i in infos} == {2}
    assert [a.get_run_id() for a in agents] == ["job-g2", "job-g2"]
    assert [a.num_nodes_waiting() for a in agents] == [0, 0], "the move is done once the round formed there"
    assert all(a.params.endpoint == f"{LOOPBACK}:{new_port}" for a in agents)
    for a in agents:
        a.current._stop_heartbeats()
    del old_store, new_store


def test_the_control_server_keeps_the_newest_move(tmp_path: Path) -> None:
    control = ControlState(tmp_path, job="j", pod="p")
    newer = RendezvousMove(id="job-g3", endpoint="10.0.0.2:29400", round=3)
    control.move_rendezvous(newer)
    assert control.move_rendezvous(newer).get("duplicate")
    # A resent, older move (an operator that failed over) must not undo the newer one.
    with pytest.raises(ConflictError, match="job-g3"):
        control.move_rendezvous(RendezvousMove(id="job-g2", endpoint="10.0.0.1:29400", round=2))
    assert recorded_move(tmp_path / RENDEZVOUS_FILE) == newer
    assert recorded_move(tmp_path / "absent.json") is None and recorded_move(None) is None
