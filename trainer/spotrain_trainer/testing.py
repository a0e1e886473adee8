"""Run your training script in your own tests as one worker pod runs it, without a cluster.

    from spotrain_trainer.testing import LocalPod

    def test_resumes_after_preemption(tmp_path):
        with LocalPod(["train.py", "--steps", "200"], workdir=tmp_path) as pod:
            pod.wait_for_step(20)
            pod.request_checkpoint("before-preemption")   # as the operator asks before a node goes
            pod.terminate()                              # as the kubelet stops the pod: SIGTERM
            pod.wait()
        with LocalPod(["train.py", "--steps", "200"], workdir=tmp_path) as pod:  # same workdir: same checkpoints
            assert pod.wait() == 0, pod.output()

A :class:`LocalPod` is ``spotrain-launch`` (torchrun's agent and the control endpoint) with the environment the
operator gives a worker pod, a rendezvous store hosted in the test's own process, and everything else (state,
staging, checkpoints, termination log, output) under ``workdir``. Everything binds to 127.0.0.1. The script's
processes are killed when the ``with`` block ends. Like ``kopf.testing.KopfRunner``, this is the one supported
entry point for users' tests; the project's own harness (several pods, S3 fault injection) is not part of it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from spotrain_protocol import CheckpointRequest, WorkerEnv
from spotrain_protocol import status as keys
from spotrain_protocol.constants import CHECKPOINT_PATH, STATUS_FILE

from .processes import kill_tree
from .statefiles import read_json

LOOPBACK = "127.0.0.1"

T = TypeVar("T")


class LocalPod:
    """One worker pod of a job on this machine (see the module docstring).

    Args:
        script: the training script and its arguments, as in the pod's ``args`` (``["train.py", "--epochs", "2"]``).
        workdir: where the pod's files go; checkpoints are in ``workdir/checkpoints``, so a second ``LocalPod`` on
            the same ``workdir`` resumes from the first one's checkpoints.
        nproc_per_node: worker processes (ranks) in the pod.
        env: more environment variables for the script (they override the pod's).
        job_name: the job's name (``SPOTRAIN_JOB_NAME``).
    """

    def __init__(
        self,
        script: Sequence[str],
        *,
        workdir: Path,
        nproc_per_node: int = 1,
        env: Mapping[str, str] | None = None,
        job_name: str = "local",
    ) -> None:
        self.script = list(script)
        self.workdir = Path(workdir)
        self.nproc_per_node = nproc_per_node
        self.extra_env = dict(env or {})
        self.job_name = job_name
        self.proc: subprocess.Popen[bytes] | None = None
        self._store: Any = None
        self._control_port = 0

    @property
    def checkpoint_uri(self) -> str:
        return str(self.workdir / "checkpoints")

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def termination_log(self) -> Path:
        """What the pod reports when it ends (the operator reads it as the container's termination message)."""
        return self.workdir / "termination-log"

    @property
    def output_path(self) -> Path:
        return self.workdir / "output.log"

    def __enter__(self) -> LocalPod:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        import torch.distributed as dist  # only here: the store is the one part that needs torch in the test

        self.workdir.mkdir(parents=True, exist_ok=True)
        # The job's rendezvous store, as the operator's rendezvous pod hosts it (spotrain_trainer.rendezvous).
        self._store = dist.TCPStore(LOOPBACK, 0, is_master=True, wait_for_workers=False, multi_tenant=True)
        self._control_port = _free_port()
        env = {
            **os.environ,
            **WorkerEnv(
                job_name=self.job_name,
                namespace="local",
                rdzv_endpoint=f"{LOOPBACK}:{self._store.port}",
                rdzv_id=f"{self.job_name}-{uuid.uuid4().hex[:8]}",
                min_nodes=1,
                max_nodes=1,
                nproc_per_node=self.nproc_per_node,
                checkpoint_uri=self.checkpoint_uri,
                state_dir=str(self.state_dir),
                staging_dir=str(self.workdir / "staging"),
                termination_log=str(self.termination_log),
                control_port=self._control_port,
                control_bind=LOOPBACK,
            ).to_env(),
            "POD_NAME": f"{self.job_name}-worker-0",
            "POD_IP": LOOPBACK,
            **self.extra_env,
        }
        launcher = Path(sys.executable).with_name("spotrain-launch")
        argv = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "spotrain_trainer.launch"]
        with self.output_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--", *self.script],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def status(self) -> dict[str, Any] | None:
        """The pod's status as the operator reads it (``GET /status``), or None before the script wrote one."""
        return read_json(self.state_dir / STATUS_FILE)

    def wait_for_step(self, step: int, timeout: float = 300.0) -> dict[str, Any]:
        """Wait until the script has reached ``step``; returns the status. Fails when the pod ends first."""

        def reached() -> dict[str, Any] | None:
            status = self.status()
            return status if status and int(status.get(keys.STEP) or 0) >= step else None

        return self._wait(f"step {step}", reached, timeout)

    def request_checkpoint(self, request_id: str, reason: str = "test", timeout: float = 300.0) -> dict[str, Any]:
        """Ask for a checkpoint as the operator does before a node goes, and wait until it is durable; returns
        the status' ``last_checkpoint``."""
        request = urllib.request.Request(
            f"http://{LOOPBACK}:{self._control_port}{CHECKPOINT_PATH}",
            data=json.dumps(CheckpointRequest(id=request_id, reason=reason).to_json()).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        self._wait("the control endpoint to accept the request", lambda: _post(request), timeout)

        def durable() -> dict[str, Any] | None:
            status = self.status()
            return status if status and status.get(keys.HANDLED_REQUEST_ID) == request_id else None

        return dict(
            self._wait(f"checkpoint request {request_id!r} to be durable", durable, timeout)[keys.LAST_CHECKPOINT]
        )

    def terminate(self) -> None:
        """SIGTERM, as the kubelet stops a pod (a spot interruption, a drained node)."""
        assert self.proc is not None, "start() the pod first"
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 300.0) -> int:
        """Wait for the pod to end; returns its exit code (0: the script completed; after :meth:`terminate`,
        torchrun's agent exits non-zero: the status says whether the workers checkpointed on the way out)."""
        assert self.proc is not None, "start() the pod first"
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        """Everything the launcher and the script printed."""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Kill the pod's processes (all of them, workers included) and close the store."""
        if self.proc is not None:
            if self.proc.poll() is None:
                kill_tree(self.proc.pid)
            self.proc.wait()
        self._store = None

    def _wait(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        assert self.proc is not None, "start() the pod first"
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the pod exited with {self.proc.returncode} while waiting for {what}:\n{self.output()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(0.2)


def _post(request: urllib.request.Request) -> bool:
    """True once the control endpoint accepted the request; False while it does not listen yet."""
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bool(200 <= response.status < 300)
    except ConnectionError:
        return False
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionError):
            return False
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])
