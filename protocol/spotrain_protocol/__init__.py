"""What the operator and the trainer agree on, written once: the control endpoint's port, paths and header, the
``/status`` answer (:class:`TrainerStatus`), the checkpoint request (:class:`CheckpointRequest`), the rendezvous
move (:class:`RendezvousMove`), the termination message of a completed trainer (:class:`CompletionRecord`) and
the worker's environment (:class:`WorkerEnv`, ``envvars``).

Only the standard library: the operator's image and the trainer's image both ship it.
"""

from __future__ import annotations

from spotrain_protocol import envvars
from spotrain_protocol.constants import (
    CONTROL_PORT,
    DEFAULT_STATE_DIR,
    DEFAULT_TERMINATION_LOG,
    RENDEZVOUS_FILE,
    RENDEZVOUS_PORT,
    REQUEST_FILE,
    STATUS_FILE,
)
from spotrain_protocol.envvars import EnvError, WorkerEnv
from spotrain_protocol.messages import (
    CheckpointRef,
    CheckpointRequest,
    CompletionRecord,
    InvalidMessage,
    RendezvousMove,
)
from spotrain_protocol.status import TrainerStatus, parse_status

__all__ = [
    "CONTROL_PORT",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TERMINATION_LOG",
    "RENDEZVOUS_FILE",
    "RENDEZVOUS_PORT",
    "REQUEST_FILE",
    "STATUS_FILE",
    "CheckpointRef",
    "CheckpointRequest",
    "CompletionRecord",
    "EnvError",
    "InvalidMessage",
    "RendezvousMove",
    "TrainerStatus",
    "WorkerEnv",
    "envvars",
    "parse_status",
]
