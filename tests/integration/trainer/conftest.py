"""Fixtures for the trainer's multi-process tests: a standalone rendezvous store and a moto S3 server per
session, a fresh bucket per test, and a process set per test whose processes (agents, workers, control
servers, orphans included) are all SIGKILLed at the end, pass or fail."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest

from spotrain_dev.trainer_harness import LOOPBACK, MOTO_ENV, LocalJob, ProcessSet, free_port, start_moto, start_store

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "train_tiny.py"


@pytest.fixture(scope="session")
def infra_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessSet]:
    procs = ProcessSet(tmp_path_factory.mktemp("trainer-infra"))
    try:
        yield procs
    finally:
        procs.kill_all()


@pytest.fixture(scope="session")
def store_port(infra_procs: ProcessSet) -> int:
    """A standalone c10d TCPStore (multi-tenant) shared by all tests; each test uses its own rendezvous id."""
    port = free_port()
    start_store(infra_procs, port)
    return port


@pytest.fixture(scope="session")
def moto_endpoint(infra_procs: ProcessSet) -> str:
    port = free_port()
    start_moto(infra_procs, port)
    return f"http://{LOOPBACK}:{port}"


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=MOTO_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessSet]:
    ps = ProcessSet(tmp_path / "logs")
    try:
        yield ps
    finally:
        ps.kill_all()


@pytest.fixture
def example() -> list[str]:
    """The training script the agents run (the repository's example)."""
    return [str(EXAMPLE)]


@pytest.fixture
def s3_env(moto_endpoint: str) -> dict[str, str]:
    """Environment for a pod whose checkpoints go to the moto server."""
    return {**MOTO_ENV, "SPOTRAIN_S3_ENDPOINT_URL": moto_endpoint}


#: ``make_job(*args, name="job", script=None, checkpoint_uri=None, standalone=False, **LocalJob options)``
MakeJob = Callable[..., LocalJob]


@pytest.fixture
def make_job(procs: ProcessSet, tmp_path: Path, example: list[str], request: pytest.FixtureRequest) -> MakeJob:
    """Makes the test's :class:`LocalJob`s: its process set, ``tmp_path/<name>`` as the job's directory, the example
    script with ``args`` after it (or ``script``), checkpoints in ``tmp_path/<name>/checkpoints`` unless
    ``checkpoint_uri`` says otherwise, and the shared rendezvous store; ``standalone=True`` for jobs that only
    ``run_single`` (no store needed). Other keywords go to ``LocalJob`` (``env``, ``min_nodes``, ``max_nodes``...)."""

    def make(
        *args: str,
        name: str = "job",
        script: Sequence[str] | None = None,
        checkpoint_uri: str | None = None,
        standalone: bool = False,
        **options: Any,
    ) -> LocalJob:
        workdir = tmp_path / name
        return LocalJob(
            procs,
            workdir,
            store_port=0 if standalone else request.getfixturevalue("store_port"),
            checkpoint_uri=checkpoint_uri or str(workdir / "checkpoints"),
            script=[*(example if script is None else script), *args],
            **options,
        )

    return make
