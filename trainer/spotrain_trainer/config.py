"""Settings read from the environment the operator puts in every worker pod.

Importable without torch (the launcher and the control server use it). Every parse error names the
environment variable at fault.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spotrain_protocol import envvars
from spotrain_protocol.constants import DEFAULT_STATE_DIR, DEFAULT_TERMINATION_LOG

from . import constants as C


class ConfigError(ValueError):
    """An environment variable has a missing or invalid value."""


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def env_str(env: Mapping[str, str], name: str, default: str | None = None, *, required: bool = False) -> str:
    value = _get(env, name)
    if value is None:
        if required or default is None:
            raise ConfigError(f"{name} is required but not set")
        return default
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not an integer") from exc
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, *, positive: bool = True) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={raw!r} is not a finite number")
    if positive and value <= 0:
        raise ConfigError(f"{name}={value} must be > 0")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (1/0, true/false)")


def default_job_name(script: str | None = None) -> str:
    """The job name when SPOTRAIN_JOB_NAME is unset (a local run): ``local-<script name>``, so that two scripts run
    locally do not share the default checkpoint path (and restore each other's state)."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(script if script is not None else sys.argv[0]).stem.lower()).strip("-")
    return f"local-{stem}" if stem else "local"


def normalize_checkpoint_uri(uri: str) -> str:
    """``file:///x`` -> ``/x``; ``s3://b/p/`` -> ``s3://b/p``; a plain path is made absolute."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :].strip("/")
        if not rest:
            raise ConfigError(f"{envvars.CHECKPOINT_URI}={uri!r} has no bucket")
        return "s3://" + rest
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
        if not uri.startswith("/"):
            raise ConfigError(f"{envvars.CHECKPOINT_URI} file:// URIs must be absolute (file:///path)")
    if "://" in uri:
        raise ConfigError(f"{envvars.CHECKPOINT_URI}={uri!r}: only s3:// and local paths are supported")
    return str(Path(uri).absolute())


@dataclass(frozen=True)
class IntervalSettings:
    """``auto`` (Young/Daly from the measured cost and the MTBF, bounded) or a fixed number of seconds."""

    mode: str = "auto"  # "auto" or "fixed"
    fixed_seconds: float | None = None
    min_seconds: float = C.DEFAULT_MIN_INTERVAL
    max_seconds: float = C.DEFAULT_MAX_INTERVAL
    mtbf_seconds: float = C.DEFAULT_MTBF
    mtbf_known: bool = False
    every_steps: int | None = None  # extension: checkpoint every N steps instead of by time


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    retry_mode: str = "adaptive"  # botocore retry mode: "adaptive" or "standard"
    max_attempts: int = 8  # botocore's retries.max_attempts: retries per request after the first attempt
    op_retries: int = 6  # our retries around a whole operation (an upload, the commit)
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    multipart_threshold: int = 16 * 1024 * 1024
    multipart_chunksize: int = 16 * 1024 * 1024
    max_concurrency: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class TrainerConfig:
    job_name: str
    namespace: str
    pod_name: str
    pod_ip: str | None
    checkpoint_uri: str
    interval: IntervalSettings
    keep_last: int
    state_dir: Path
    staging_dir: Path
    termination_log: Path
    #: False when SPOTRAIN_STAGING_DIR is unset and staging falls back to the temporary directory, which in a
    #: container is its writable layer: small, and counted against the pod's ephemeral storage.
    staging_dir_set: bool = True
    s3: S3Settings = field(default_factory=S3Settings)
    async_checkpoints: bool = True
    writer_threads: int = 1
    pg_timeout_seconds: float = 600.0
    status_interval_seconds: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, script: str | None = None) -> TrainerConfig:
        """Settings from ``env`` (default: the process environment); ``script`` (default: ``sys.argv[0]``) names
        the job when SPOTRAIN_JOB_NAME is unset."""
        e: Mapping[str, str] = os.environ if env is None else env
        job = env_str(e, envvars.JOB_NAME, default_job_name(script))
        pod = env_str(e, "POD_NAME", socket.gethostname())
        uri = normalize_checkpoint_uri(env_str(e, envvars.CHECKPOINT_URI, f"/tmp/spotrain-checkpoints/{job}"))

        raw_interval = (_get(e, envvars.CHECKPOINT_INTERVAL) or envvars.AUTO).lower()
        min_s = env_float(e, envvars.CHECKPOINT_MIN_INTERVAL, C.DEFAULT_MIN_INTERVAL)
        max_s = env_float(e, envvars.CHECKPOINT_MAX_INTERVAL, C.DEFAULT_MAX_INTERVAL)
        if min_s > max_s:
            raise ConfigError(
                f"{envvars.CHECKPOINT_MIN_INTERVAL}={min_s} is above {envvars.CHECKPOINT_MAX_INTERVAL}={max_s}"
            )
        fixed: float | None = None
        if raw_interval != envvars.AUTO:
            fixed = env_float(e, envvars.CHECKPOINT_INTERVAL, 0.0)
        every_steps_raw = _get(e, envvars.CHECKPOINT_EVERY_STEPS)
        every_steps = env_int(e, envvars.CHECKPOINT_EVERY_STEPS, 0, minimum=1) if every_steps_raw else None
        interval = IntervalSettings(
            mode="auto" if fixed is None else "fixed",
            fixed_seconds=fixed,
            min_seconds=min_s,
            max_seconds=max_s,
            mtbf_seconds=env_float(e, envvars.MTBF_SECONDS, C.DEFAULT_MTBF),
            mtbf_known=_get(e, envvars.MTBF_SECONDS) is not None,
            every_steps=every_steps,
        )
        s3 = S3Settings(
            endpoint_url=_get(e, envvars.S3_ENDPOINT_URL),
            region=_get(e, envvars.S3_REGION) or _get(e, "AWS_REGION") or _get(e, "AWS_DEFAULT_REGION"),
            retry_mode=env_str(e, envvars.S3_RETRY_MODE, "adaptive"),
            max_attempts=env_int(e, envvars.S3_MAX_ATTEMPTS, 8, minimum=1),
            op_retries=env_int(e, envvars.S3_OP_RETRIES, 6, minimum=1),
            backoff_base=env_float(e, envvars.S3_BACKOFF_BASE, 0.5),
            backoff_max=env_float(e, envvars.S3_BACKOFF_MAX, 20.0),
            multipart_threshold=env_int(e, envvars.S3_MULTIPART_THRESHOLD, 16 * 1024 * 1024, minimum=5 << 20),
            multipart_chunksize=env_int(e, envvars.S3_MULTIPART_CHUNKSIZE, 16 * 1024 * 1024, minimum=5 << 20),
            max_concurrency=env_int(e, envvars.S3_MAX_CONCURRENCY, 8, minimum=1),
        )
        if s3.retry_mode not in ("adaptive", "standard", "legacy"):
            raise ConfigError(f"{envvars.S3_RETRY_MODE}={s3.retry_mode!r}: use adaptive or standard")
        # The operator mounts an emptyDir for staging and names it in SPOTRAIN_STAGING_DIR.
        staging_default = str(Path(tempfile.gettempdir()) / C.STAGING_DIR_NAME / pod)
        return cls(
            job_name=job,
            namespace=env_str(e, envvars.NAMESPACE, "default"),
            pod_name=pod,
            pod_ip=_get(e, "POD_IP"),
            checkpoint_uri=uri,
            interval=interval,
            keep_last=env_int(e, envvars.KEEP_LAST, C.DEFAULT_KEEP_LAST, minimum=1),
            state_dir=Path(env_str(e, envvars.STATE_DIR, str(Path(DEFAULT_STATE_DIR) / job))),  # as spotrain-launch
            staging_dir=Path(env_str(e, envvars.STAGING_DIR, staging_default)),
            termination_log=Path(env_str(e, envvars.TERMINATION_LOG, DEFAULT_TERMINATION_LOG)),
            staging_dir_set=_get(e, envvars.STAGING_DIR) is not None,
            s3=s3,
            async_checkpoints=env_bool(e, envvars.CHECKPOINT_ASYNC, True),
            writer_threads=env_int(e, envvars.CHECKPOINT_WRITER_THREADS, 1, minimum=1),
            pg_timeout_seconds=env_float(e, envvars.PG_TIMEOUT_SECONDS, 600.0),
            status_interval_seconds=env_float(e, envvars.STATUS_INTERVAL_SECONDS, 1.0),
        )
