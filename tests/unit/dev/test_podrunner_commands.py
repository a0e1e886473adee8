"""What the pod runner runs for spotrain's pods, decided without a cluster: the rendezvous store bound to its pod
IP, a worker's environment with the store's address for the Service name, the pod IP to bind and per-pod
directories, and which store pod a Service name stands for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spotrain_dev.podrunner.commands import (
    Host,
    flag,
    rendezvous_command,
    rendezvous_service,
    store_candidates,
    worker_command,
)
from spotrain_dev.podrunner.environment import WaitingError
from spotrain_protocol import envvars

PYTHON = "/venv/bin/python"
HOST = Host(PYTHON, {"PATH": "/usr/bin", "HOME": "/home/me", "SECRET_OF_THE_RUNNER": "x"}, Path("/work/pods/ns/p"))


def pod(name: str, ip: str, labels: dict[str, str] | None = None, *, phase: str = "Running",
        created: str = "2026-01-01T00:00:00Z", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels or {},
                            "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {"metadata": meta, "spec": {"nodeName": "n"}, "status": {"phase": phase, "podIP": ip}}


def test_rendezvous_store_binds_its_pod_ip() -> None:
    container = {"command": ["python", "-m", "spotrain_trainer.rendezvous"], "args": ["--port", "$(PORT)"]}
    command = rendezvous_command(pod("job-rdzv", "127.1.0.2"), container, {"PORT": "29400"}, HOST)
    assert command.argv == [PYTHON, "-m", "spotrain_trainer.rendezvous", "--port", "29400", "--host", "127.1.0.2"]
    assert command.listens == [("127.1.0.2", 29400)]
    assert command.env["TMPDIR"] == "/work/pods/ns/p/tmp"
    assert command.env["PATH"] == "/venv/bin:/usr/bin" and command.env["HOME"] == "/home/me"
    assert "SECRET_OF_THE_RUNNER" not in command.env


def test_rendezvous_port_from_the_container_port() -> None:
    container = {"command": ["python", "-m", "spotrain_trainer.rendezvous"], "ports": [{"containerPort": 29500}]}
    assert rendezvous_command(pod("r", "127.1.0.2"), container, {}, HOST).listens == [("127.1.0.2", 29500)]


def test_rendezvous_without_a_port_waits_saying_so() -> None:
    with pytest.raises(WaitingError, match="neither --port nor a containerPort"):
        rendezvous_command(pod("r", "127.1.0.2"), {"command": ["python"]}, {}, HOST)


def test_worker_gets_the_store_address_its_pod_ip_and_its_own_directories() -> None:
    spec_env = {envvars.RDZV_ENDPOINT: "job-rdzv.ns.svc:29400", envvars.CONTROL_PORT: "8470", "POD_NAME": "w"}
    container = {"args": ["examples/train_tiny.py", "--pod", "$(POD_NAME)"], "ports": [{"containerPort": 9000}]}
    command = worker_command(pod("w", "127.1.0.9"), container, spec_env, HOST, "127.1.0.2:29400")
    assert command.argv == [PYTHON, "-m", "spotrain_trainer.launch", "examples/train_tiny.py", "--pod", "w"]
    env = command.env
    assert env[envvars.RDZV_ENDPOINT] == "127.1.0.2:29400"
    assert env[envvars.CONTROL_BIND] == "127.1.0.9"
    assert env[envvars.STATE_DIR] == "/work/pods/ns/p/state"
    assert env[envvars.STAGING_DIR] == "/work/pods/ns/p/staging"
    assert env[envvars.TERMINATION_LOG] == "/work/pods/ns/p/termination-log"
    assert env["TMPDIR"] == "/work/pods/ns/p/tmp" and env["HOSTNAME"] == "w"
    assert command.listens == [("127.1.0.9", 8470), ("127.1.0.9", 9000)]


def test_worker_without_an_endpoint_keeps_its_spec() -> None:
    command = worker_command(pod("w", "127.1.0.9"), {"command": ["/bin/true"]}, {}, HOST, None)
    assert command.argv == ["/bin/true"] and envvars.RDZV_ENDPOINT not in command.env


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("job-rdzv.ns.svc:29400", ("job-rdzv", "ns", "29400")),
    ("job-rdzv.ns.svc.cluster.local:29400", ("job-rdzv", "ns", "29400")),
    ("127.1.0.2:29400", None),
    ("store.example.com:29400", None),
])
def test_rendezvous_service(endpoint: str, expected: tuple[str, str, str] | None) -> None:
    assert rendezvous_service(endpoint) == expected


def test_store_candidates_newest_round_first_with_the_target_port() -> None:
    service = {"spec": {"selector": {"app": "rdzv"}, "ports": [{"port": 29400, "targetPort": 29401}]}}
    pods = [
        pod("old", "127.1.0.2", {"app": "rdzv", "spotrain.dev/round": "1"}),
        pod("new", "127.1.0.3", {"app": "rdzv", "spotrain.dev/round": "2"}),
        pod("going", "127.1.0.4", {"app": "rdzv", "spotrain.dev/round": "3"}, deleting=True),
        pod("pending", "127.1.0.5", {"app": "rdzv", "spotrain.dev/round": "3"}, phase="Pending"),
        pod("worker", "127.1.0.6", {"app": "worker"}),
    ]
    assert store_candidates(service, "ns", "29400", pods) == ["127.1.0.3:29401", "127.1.0.2:29401"]


def test_a_service_without_a_selector_has_no_store() -> None:
    assert store_candidates({"spec": {}}, "ns", "29400", [pod("p", "127.1.0.2")]) == []


@pytest.mark.parametrize(("args", "expected"), [
    (["--port", "1"], "1"), (["--port=2"], "2"), (["--port"], None), (["--host", "h"], None),
])
def test_flag(args: list[str], expected: str | None) -> None:
    assert flag(args, "--port") == expected
