"""The environment of a worker container: every ``SPOTRAIN_*`` name the trainer reads, defined once, and
:class:`WorkerEnv`, the part of it the operator (and the devcluster's pod runner, standing in for the kubelet) sets.

The trainer parses these with its own defaults and limits (spotrain_trainer.config, spotrain_trainer.launch);
the names here are what both sides spell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final, Literal

# -- set by the operator on every worker (WorkerEnv) -------------------------------------------------------
JOB_NAME = "SPOTRAIN_JOB_NAME"
NAMESPACE = "SPOTRAIN_NAMESPACE"
RDZV_ENDPOINT = "SPOTRAIN_RDZV_ENDPOINT"
RDZV_ID = "SPOTRAIN_RDZV_ID"
MIN_NODES = "SPOTRAIN_MIN_NODES"
MAX_NODES = "SPOTRAIN_MAX_NODES"
NPROC_PER_NODE = "SPOTRAIN_NPROC_PER_NODE"
CHECKPOINT_URI = "SPOTRAIN_CHECKPOINT_URI"
CHECKPOINT_INTERVAL = "SPOTRAIN_CHECKPOINT_INTERVAL"  # seconds, or "auto"
CHECKPOINT_MIN_INTERVAL = "SPOTRAIN_CHECKPOINT_MIN_INTERVAL"
CHECKPOINT_MAX_INTERVAL = "SPOTRAIN_CHECKPOINT_MAX_INTERVAL"
KEEP_LAST = "SPOTRAIN_KEEP_LAST"
CONTROL_PORT = "SPOTRAIN_CONTROL_PORT"
MTBF_SECONDS = "SPOTRAIN_MTBF_SECONDS"
S3_ENDPOINT_URL = "SPOTRAIN_S3_ENDPOINT_URL"
STAGING_DIR = "SPOTRAIN_STAGING_DIR"
# From the job's control Secret (a secretKeyRef, so not a WorkerEnv value), or a file that holds it.
CONTROL_TOKEN = "SPOTRAIN_CONTROL_TOKEN"
CONTROL_TOKEN_FILE = "SPOTRAIN_CONTROL_TOKEN_FILE"
# -- per pod, where the pod's own layout decides (the devcluster's pod runner sets them) -------------------
CONTROL_BIND = "SPOTRAIN_CONTROL_BIND"
STATE_DIR = "SPOTRAIN_STATE_DIR"
TERMINATION_LOG = "SPOTRAIN_TERMINATION_LOG"

# -- the trainer's own settings, for a pod template to set (spotrain-launch --help lists them) ------------
RDZV_WAIT_SECONDS = "SPOTRAIN_RDZV_WAIT_SECONDS"
RDZV_CONF_EXTRA = "SPOTRAIN_RDZV_CONF_EXTRA"
MAX_RESTARTS = "SPOTRAIN_MAX_RESTARTS"
SHUTDOWN_TIMEOUT = "SPOTRAIN_SHUTDOWN_TIMEOUT"
MONITOR_INTERVAL = "SPOTRAIN_MONITOR_INTERVAL"
CHECKPOINT_EVERY_STEPS = "SPOTRAIN_CHECKPOINT_EVERY_STEPS"
CHECKPOINT_ASYNC = "SPOTRAIN_CHECKPOINT_ASYNC"
CHECKPOINT_WRITER_THREADS = "SPOTRAIN_CHECKPOINT_WRITER_THREADS"
S3_REGION = "SPOTRAIN_S3_REGION"
S3_RETRY_MODE = "SPOTRAIN_S3_RETRY_MODE"
S3_MAX_ATTEMPTS = "SPOTRAIN_S3_MAX_ATTEMPTS"
S3_OP_RETRIES = "SPOTRAIN_S3_OP_RETRIES"
S3_BACKOFF_BASE = "SPOTRAIN_S3_BACKOFF_BASE"
S3_BACKOFF_MAX = "SPOTRAIN_S3_BACKOFF_MAX"
S3_MULTIPART_THRESHOLD = "SPOTRAIN_S3_MULTIPART_THRESHOLD"
S3_MULTIPART_CHUNKSIZE = "SPOTRAIN_S3_MULTIPART_CHUNKSIZE"
S3_MAX_CONCURRENCY = "SPOTRAIN_S3_MAX_CONCURRENCY"
CONTROL_SERVER = "SPOTRAIN_CONTROL_SERVER"  # "0" or "false": spotrain-launch starts no control server
PG_TIMEOUT_SECONDS = "SPOTRAIN_PG_TIMEOUT_SECONDS"
STATUS_INTERVAL_SECONDS = "SPOTRAIN_STATUS_INTERVAL_SECONDS"
LOG_LEVEL = "SPOTRAIN_LOG_LEVEL"
# -- between spotrain-launch and the control server it starts ---------------------------------------------
LAUNCH_PID = "SPOTRAIN_LAUNCH_PID"

AUTO: Final = "auto"  # SPOTRAIN_CHECKPOINT_INTERVAL: Young/Daly from the MTBF


class EnvError(ValueError):
    """A variable of a worker's environment has a value of the wrong form; the message names it."""


@dataclass(frozen=True)
class WorkerEnv:
    """The variables the operator puts in every worker's environment (None: not set), as typed values.

    ``to_env`` writes them as the trainer reads them; ``from_env`` reads them back (a value that is empty after
    stripping counts as unset, as the trainer takes it) and raises :class:`EnvError` for a number that is not one.
    """

    job_name: str | None = None
    namespace: str | None = None
    rdzv_endpoint: str | None = None  # host:port of the job's rendezvous store
    rdzv_id: str | None = None
    min_nodes: int | None = None
    max_nodes: int | None = None
    nproc_per_node: int | None = None
    checkpoint_uri: str | None = None
    checkpoint_interval: float | Literal["auto"] | None = None
    checkpoint_min_interval: float | None = None
    checkpoint_max_interval: float | None = None
    keep_last: int | None = None
    control_port: int | None = None
    mtbf_seconds: int | None = None  # whole seconds
    s3_endpoint_url: str | None = None
    staging_dir: str | None = None
    control_bind: str | None = None
    state_dir: str | None = None
    termination_log: str | None = None

    def to_env(self) -> dict[str, str]:
        """The set variables, in the order above (an env list's ``$(VAR)`` references read earlier entries)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[_NAMES[f.name]] = str(value)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerEnv:
        values: dict[str, object] = {}
        for f in fields(cls):
            name = _NAMES[f.name]
            raw = (env.get(name) or "").strip()
            if raw:
                values[f.name] = _parse(name, raw, _KINDS.get(f.name, "str"))
        return cls(**values)  # type: ignore[arg-type]


_NAMES = {
    "job_name": JOB_NAME,
    "namespace": NAMESPACE,
    "rdzv_endpoint": RDZV_ENDPOINT,
    "rdzv_id": RDZV_ID,
    "min_nodes": MIN_NODES,
    "max_nodes": MAX_NODES,
    "nproc_per_node": NPROC_PER_NODE,
    "checkpoint_uri": CHECKPOINT_URI,
    "checkpoint_interval": CHECKPOINT_INTERVAL,
    "checkpoint_min_interval": CHECKPOINT_MIN_INTERVAL,
    "checkpoint_max_interval": CHECKPOINT_MAX_INTERVAL,
    "keep_last": KEEP_LAST,
    "control_port": CONTROL_PORT,
    "mtbf_seconds": MTBF_SECONDS,
    "s3_endpoint_url": S3_ENDPOINT_URL,
    "staging_dir": STAGING_DIR,
    "control_bind": CONTROL_BIND,
    "state_dir": STATE_DIR,
    "termination_log": TERMINATION_LOG,
}
# The fields that are not plain strings.
_KINDS: dict[str, str] = {
    "min_nodes": "int",
    "max_nodes": "int",
    "nproc_per_node": "int",
    "keep_last": "int",
    "control_port": "int",
    "mtbf_seconds": "int",
    "checkpoint_min_interval": "float",
    "checkpoint_max_interval": "float",
    "checkpoint_interval": "interval",
}


def _parse(name: str, raw: str, kind: str) -> object:
    if kind == "str":
        return raw
    if kind == "interval" and raw.lower() == AUTO:
        return AUTO
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise EnvError(f"{name}={raw!r} is not an integer") from None
    try:
        value = float(raw)
    except ValueError:
        raise EnvError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise EnvError(f"{name}={raw!r} is not a finite number")
    return value
