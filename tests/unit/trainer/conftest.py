"""Fixtures for the trainer's unit tests: a session's environment and a factory of sessions (world size 1), a
moto S3 server process on 127.0.0.1 (one per session), a bucket per test, and a fault-injecting proxy in front
of it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from spotrain_dev.trainer_harness import LOOPBACK, MOTO_ENV, FaultProxy, ProcessSet, free_port, start_moto
from spotrain_trainer.config import S3Settings, TrainerConfig
from spotrain_trainer.session import Session

MakeSession = Callable[..., Session]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "SPOTRAIN_JOB_NAME": "unit",
        "POD_NAME": "pod-0",
        "SPOTRAIN_CHECKPOINT_URI": str(tmp_path / "ckpt"),
        "SPOTRAIN_STATE_DIR": str(tmp_path / "state"),
        "SPOTRAIN_STAGING_DIR": str(tmp_path / "staging"),
        "SPOTRAIN_TERMINATION_LOG": str(tmp_path / "term" / "termination-log"),
    }


@pytest.fixture
def make_session(env: dict[str, str]) -> MakeSession:
    def make(**overrides: str) -> Session:
        cfg = TrainerConfig.from_env({**env, **overrides})
        return Session(config=cfg, install_signal_handler=False, fast_exit=False)

    return make


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    procs = ProcessSet(tmp_path_factory.mktemp("unit-moto"))
    port = free_port()
    try:
        start_moto(procs, port)
        yield LOOPBACK, port
    finally:
        procs.kill_all()


def make_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=MOTO_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def moto_url(moto_server: tuple[str, int]) -> str:
    return f"http://{moto_server[0]}:{moto_server[1]}"


@pytest.fixture
def client(moto_url: str) -> Any:
    """A boto3 S3 client talking to moto directly (no faults)."""
    return make_client(moto_url)


@pytest.fixture
def client_factory() -> Any:
    """Build a boto3 S3 client for another endpoint (e.g. the fault proxy)."""
    return make_client


@pytest.fixture
def bucket(client: Any) -> str:
    name = f"unit-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(moto_server: tuple[str, int]) -> Iterator[FaultProxy]:
    p = FaultProxy(*moto_server)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in MOTO_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def fast_s3(aws_env: None) -> S3Settings:
    """Small retry budgets and backoff so that failing paths finish quickly."""
    return S3Settings(
        max_attempts=2,
        op_retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
        retry_mode="standard",
        multipart_threshold=5 * 1024 * 1024,
        multipart_chunksize=5 * 1024 * 1024,
        max_concurrency=2,
        connect_timeout=5,
        read_timeout=10,
    )


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"
