"""torchrun as ``spotrain-launch`` runs it: ``python -m spotrain_trainer.agent [torchrun arguments]``.

It is torchrun (``torch.distributed.run.main``) with one log record reworded. Workers that took a checkpoint on a
notice exit with ``EXIT_CHECKPOINTED_ON_NOTICE`` (75), non-zero on purpose (a worker exiting 0 makes its agent
close the rendezvous for every node), and torchrun logs every non-zero exit as an error: ``failed (exitcode: 75)
local_rank: 0 (pid: ...) of binary: ...``, which reads like a crash in the pod's log. :class:`NoticeExitFilter`
turns that record (and only that one) into a warning that says what happened.

An agent stopped by a signal (its pod evicted after a notice) leaves the rendezvous before it exits. torchrun does
not: on a ``SignalException`` it keeps the rendezvous open for the others and simply stops
(torch/distributed/launcher/api.py, ``launch_agent``), so the departed node stays a participant of the complete
round until its heartbeats expire (``keep_alive_interval`` x ``keep_alive_max_attempt``, 15 s by default), and
the survivors' next round cannot start before that. The agent's rendezvous handler is torch's own c10d handler,
made through the backend registry (:data:`RDZV_BACKEND`) so that this module holds it; on the signal it runs
the same exit operation torch runs before each re-join (``DynamicRendezvousHandler.next_rendezvous``), which
removes this node from the participants and, with the last one gone, starts the next round at once.

The rendezvous store can move while the agents live: when its node gets a notice (or is cordoned, or its pool left
the spec), the operator starts a new store and POSTs its address to every worker's control server
(spotrain_protocol.RendezvousMove), which records it in the pod's state directory. :class:`MovableRendezvous`
reads that record: while one names another rendezvous than the agent's, it reports a node waiting, which is what
makes torchrun's agent restart its workers for a membership change (``SimpleElasticAgent._invoke_run``); the
workers' SIGTERM checkpoint runs as for a scale-up, and the agent's next ``next_rendezvous`` joins the new store.
The pod, its agent and its control server stay: only the worker processes restart, as in any new round.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from spotrain_protocol import RENDEZVOUS_FILE, InvalidMessage, RendezvousMove, envvars

from .constants import EXIT_CHECKPOINTED_ON_NOTICE
from .statefiles import read_json

log = logging.getLogger("spotrain.agent")

#: The rendezvous backend spotrain-launch names: torch's c10d handler, kept by this module (see above).
RDZV_BACKEND = "spotrain-c10d"
#: How long a departing agent tries to leave the rendezvous; past it, heartbeat expiry removes it as before.
LEAVE_TIMEOUT_SECONDS = 5.0

#: The logger and message of torchrun's record for failed workers (torch/distributed/elastic/multiprocessing/api.py,
#: ``SubprocessContext._poll``: ``logger.error("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s", ...)``).
TORCHRUN_LOGGER = "torch.distributed.elastic.multiprocessing.api"
TORCHRUN_FAILED = "failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s"


class NoticeExitFilter(logging.Filter):
    """Rewords torchrun's "failed (exitcode: 75)" error as the expected end of an interrupted generation."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.msg == TORCHRUN_FAILED
            and isinstance(args, tuple)
            and args
            and args[0] == EXIT_CHECKPOINTED_ON_NOTICE
        ):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
            record.msg = (
                "workers took a checkpoint on notice and exited as planned (exitcode: %s, first local_rank: %s, "
                "pid: %s, binary: %s): not a crash; the agent restarts them from that checkpoint"
            )
        return True


def recorded_move(path: Path | None) -> RendezvousMove | None:
    """The rendezvous move the control server recorded in the pod's state directory, if any (one that does not
    parse is none: the control server checked it before writing it)."""
    obj = read_json(path) if path is not None else None
    if obj is None:
        return None
    try:
        return RendezvousMove.from_json(obj)
    except InvalidMessage:
        return None


def _torch_c10d_handler(params: Any) -> Any:
    """torch's own c10d rendezvous handler, made as the registry makes it (``registry._create_c10d_handler``),
    under spotrain's backend name."""
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend, create_backend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    class SpotrainC10dBackend(C10dRendezvousBackend):
        """torch's c10d backend under spotrain's name (the handler registry checks that the two agree)."""

        @property
        def name(self) -> str:
            return RDZV_BACKEND

    _, store = create_backend(params)  # the store, connected (or hosted) as torch does it
    return create_handler(store, SpotrainC10dBackend(store, params.run_id), params)


def _movable_rendezvous_class() -> type:
    from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters

    class MovableRendezvous(RendezvousHandler):
        """torch's c10d handler that follows the job's store when the operator moves it (see the module's
        docstring); everything else is delegated to the handler of the current store."""

        def __init__(self, params: Any, move_file: Path | None) -> None:
            self.params = params
            self.move_file = move_file
            self.current = _torch_c10d_handler(params)

        def _pending_move(self) -> RendezvousMove | None:
            move = recorded_move(self.move_file)
            return move if move is not None and move.id != self.current.get_run_id() else None

        def next_rendezvous(self) -> Any:
            move = self._pending_move()
            if move is not None:
                log.info("the rendezvous store moved to %s: joining round %d (%s) there", move.endpoint, move.round,
                         move.id)
                leave_rendezvous(self.current)  # the old store lives until the new round has formed
                p = self.params
                self.params = RendezvousParameters(p.backend, move.endpoint, move.id, p.min_nodes, p.max_nodes,
                                                   p.local_addr, **p.config)
                self.current = _torch_c10d_handler(self.params)
            return self.current.next_rendezvous()

        def num_nodes_waiting(self) -> int:
            # A recorded move counts as a node waiting: torchrun's agent then restarts the workers for a new round.
            return 1 if self._pending_move() is not None else int(self.current.num_nodes_waiting())

        def get_backend(self) -> str:
            return str(self.current.get_backend())

        @property
        def use_agent_store(self) -> bool:
            return bool(self.current.use_agent_store)

        def is_closed(self) -> bool:
            return bool(self.current.is_closed())

        def set_closed(self) -> None:
            self.current.set_closed()

        def get_run_id(self) -> str:
            return str(self.current.get_run_id())

        def shutdown(self) -> bool:
            return bool(self.current.shutdown())

    return MovableRendezvous


class RendezvousHandlers:
    """Makes the agent's rendezvous handlers (:class:`MovableRendezvous` over torch's c10d handler) and keeps them,
    so that a departing agent can leave."""

    def __init__(self, move_file: Path | None = None) -> None:
        self.move_file = move_file
        self.made: list[Any] = []

    def create(self, params: Any) -> Any:
        handler = _movable_rendezvous_class()(params, self.move_file)
        self.made.append(handler)
        return handler

    def leave_all(self, timeout: float = LEAVE_TIMEOUT_SECONDS) -> None:
        for handler in self.made:
            leave_rendezvous(handler.current, timeout)


def leave_rendezvous(handler: Any, timeout: float = LEAVE_TIMEOUT_SECONDS) -> None:
    """Removes this node from the rendezvous's participants (without closing the rendezvous for the others).
    Uses torch's private exit operation (``_RendezvousExitOp``, torch 2.13), as ``next_rendezvous`` does; a store
    that cannot be reached leaves the node to heartbeat expiry, as without this."""
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import _RendezvousExitOp

    handler._stop_heartbeats()
    try:
        handler._op_executor.run(_RendezvousExitOp(), time.monotonic() + timeout)
    except Exception as e:  # the store may be gone too; the others then wait out the heartbeats, as before
        log.warning("could not leave the rendezvous (%s: %s); the others wait for its heartbeats to expire",
                    type(e).__name__, e)
    else:
        log.info("left the rendezvous: the other nodes' next round need not wait for this node's heartbeats")


def main(argv: list[str] | None = None) -> None:
    logging.getLogger(TORCHRUN_LOGGER).addFilter(NoticeExitFilter())
    if not log.handlers:  # torchrun configures only torch's loggers; this one's lines go to the pod's log too
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry
    from torch.distributed.run import main as torchrun

    state_dir = os.environ.get(envvars.STATE_DIR)  # spotrain-launch sets it, as for the control server
    handlers = RendezvousHandlers(Path(state_dir) / RENDEZVOUS_FILE if state_dir else None)
    rendezvous_handler_registry.register(RDZV_BACKEND, handlers.create)
    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except SignalException:
        handlers.leave_all()
        raise


if __name__ == "__main__":
    main()
