"""spotrain trainer runtime: elastic launcher, coordinated checkpoint-on-notice, durable checkpoints.

The launcher and the control server import only light modules; torch is imported when the session API is
first used (``spotrain_trainer.Session``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .constants import EXIT_CHECKPOINTED_ON_NOTICE, EXIT_COMPLETED, EXIT_NOTICE_CHECKPOINT_FAILED

if TYPE_CHECKING:
    from .checkpoint.commit import CheckpointError
    from .config import TrainerConfig
    from .data import ElasticDistributedSampler
    from .session import CheckpointedOnNotice, NoticeCheckpointFailed, Session

__all__ = [
    "EXIT_CHECKPOINTED_ON_NOTICE",
    "EXIT_COMPLETED",
    "EXIT_NOTICE_CHECKPOINT_FAILED",
    "CheckpointError",
    "CheckpointedOnNotice",
    "ElasticDistributedSampler",
    "NoticeCheckpointFailed",
    "Session",
    "TrainerConfig",
]

_LAZY = {
    "Session": "session",
    "CheckpointedOnNotice": "session",
    "NoticeCheckpointFailed": "session",
    "CheckpointError": "checkpoint.commit",
    "ElasticDistributedSampler": "data",
    "TrainerConfig": "config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
