"""Durable, verifiable DCP checkpoints on a local/volume path or S3.

Layout under the checkpoint URI (``s3://bucket/prefix`` or a path)::

    step-000000120/.metadata          DCP metadata (written by rank 0)
    step-000000120/__0_0.distcp       rank 0's shard file, ... __{rank}_0.distcp for every rank that wrote data
    step-000000120/COMMIT             written last: {"format": "spotrain-checkpoint/1", "step", "world_size",
                                      "time", "reason", "request_id", "files": {name: {"size", "sha256"}}, ...}
    COMPLETED                         {"spotrain": "completed", "step", ...} once the job finished

State dict keys inside a checkpoint: ``app`` (``model``/``optim`` from ``get_state_dict``, ``scheduler``),
``spotrain`` (``step``, ``world_size``), ``state.<name>`` (user state, the same on every rank) and
``spotrain_rank.<rank>`` (pickled RNG states and per-rank user state: one key per rank).
"""

from .commit import CheckpointError, CommitMarker, FileInfo, IntegrityError, Listing, plan_retention, step_dir_name
from .storage import CheckpointStorage, CommitConflictError, LocalStorage, S3Storage, StorageError, open_storage

__all__ = [
    "CheckpointError",
    "CheckpointStorage",
    "CommitConflictError",
    "CommitMarker",
    "FileInfo",
    "IntegrityError",
    "Listing",
    "LocalStorage",
    "S3Storage",
    "StorageError",
    "open_storage",
    "plan_retention",
    "step_dir_name",
]
