"""A departing torchrun agent leaves the rendezvous (spotrain_trainer.agent): the other nodes' next round starts
when they leave too, instead of waiting for the departed node's heartbeats to expire."""

from __future__ import annotations

import pickle
import threading
from datetime import timedelta
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import RendezvousParameters, rendezvous_handler_registry

from spotrain_dev.trainer_harness import LOOPBACK, free_port
from spotrain_trainer.agent import RDZV_BACKEND, RendezvousHandlers, leave_rendezvous

# Registered once per process, as spotrain_trainer.agent.main does in the agent; handlers are made through torch's
# registry, which checks that the backend's name matches the registered one.
HANDLERS = RendezvousHandlers()
rendezvous_handler_registry.register(RDZV_BACKEND, HANDLERS.create)


def _join_two(port: int) -> list[Any]:
    """Two agents' handlers (torch's c10d handlers, as the agents hold them) that formed one round."""
    params = {"backend": RDZV_BACKEND, "endpoint": f"{LOOPBACK}:{port}", "run_id": "leave-test", "min_nodes": 2,
              "max_nodes": 2, "is_host": "false", "last_call_timeout": "1", "join_timeout": "60"}
    made = [rendezvous_handler_registry.create_handler(RendezvousParameters(**params))  # type: ignore[arg-type]
            for _ in range(2)]
    assert all(h in HANDLERS.made for h in made)
    _rendezvous_all(made)
    return [h.current for h in made]  # type: ignore[attr-defined]


def _rendezvous_all(made: list[Any]) -> None:
    errors: list[BaseException] = []

    def join(handler: object) -> None:
        try:
            handler.next_rendezvous()  # type: ignore[attr-defined]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=join, args=(h,)) for h in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def _state(handler: Any) -> Any:
    """The rendezvous state as the store holds it now (the handlers' own copies are cached for a second)."""
    state_bytes, _ = handler._state_holder._backend.get_state()
    return pickle.loads(state_bytes)


def test_a_departing_node_is_no_participant_and_the_last_one_out_starts_the_next_round() -> None:
    port = free_port()
    store = dist.TCPStore(LOOPBACK, port, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False)
    departing, survivor = _join_two(port)
    before = _state(survivor)
    assert before.complete and len(before.participants) == 2
    round_ = before.round

    leave_rendezvous(departing)
    after = _state(survivor)
    assert departing._this_node not in after.participants and survivor._this_node in after.participants
    assert after.complete and after.round == round_  # the survivor's own round stands until it leaves too

    leave_rendezvous(survivor)  # what the survivor's agent does before it re-joins (next_rendezvous's exit op)
    last = _state(survivor)
    assert not last.participants and not last.complete and last.round == round_ + 1
    del store


def test_leaving_an_unreachable_store_gives_up_without_raising() -> None:
    port = free_port()
    store = dist.TCPStore(LOOPBACK, port, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False)
    departing, other = _join_two(port)
    other._stop_heartbeats()  # the other node is gone with the store: no heartbeat of its own into a closed socket
    del store  # the store's host is gone (its node went first)
    leave_rendezvous(departing, timeout=2.0)
