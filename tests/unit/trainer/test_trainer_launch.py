from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from spotrain_dev.testing import wait_for
from spotrain_dev.trainer_harness import LOOPBACK, ProcessSet, free_port, http_json, port_open
from spotrain_trainer.agent import TORCHRUN_FAILED, TORCHRUN_LOGGER, NoticeExitFilter
from spotrain_trainer.config import ConfigError, TrainerConfig
from spotrain_trainer.constants import EXIT_CHECKPOINTED_ON_NOTICE
from spotrain_trainer.launch import StoreUnreachable, build_launch, main, parse_args, wait_for_store
from spotrain_trainer.processes import pid_alive

POD_ENV = {
    "SPOTRAIN_JOB_NAME": "bert",
    "SPOTRAIN_NAMESPACE": "ml",
    "POD_NAME": "bert-worker-3",
    "POD_IP": "10.0.3.7",
    "SPOTRAIN_RDZV_ENDPOINT": "bert-rdzv.ml.svc:29400",
    "SPOTRAIN_RDZV_ID": "bert-g7",
    "SPOTRAIN_MIN_NODES": "2",
    "SPOTRAIN_MAX_NODES": "8",
    "SPOTRAIN_NPROC_PER_NODE": "4",
    "SPOTRAIN_CHECKPOINT_URI": "s3://ckpt/bert",
    "PATH": "/usr/bin",
}


def test_two_local_jobs_get_their_own_state_directories() -> None:
    """Run by hand on one machine, two scripts must not read each other's checkpoint requests and status."""
    local = {"SPOTRAIN_RDZV_ENDPOINT": "127.0.0.1:29400"}
    first = build_launch(local, ["train_a.py"], python="python")
    second = build_launch(local, ["train_b.py"], python="python")
    assert first.env_added["SPOTRAIN_STATE_DIR"] != second.env_added["SPOTRAIN_STATE_DIR"]


def test_argv_and_env_from_the_pod_environment() -> None:
    plan = build_launch(POD_ENV, ["train.py", "--lr", "3e-4"], python="/venv/bin/python")
    assert plan.argv == [
        "/venv/bin/python",
        "-m",
        "spotrain_trainer.agent",
        "--nnodes=2:8",
        "--nproc-per-node=4",
        "--max-restarts=1000000",
        "--rdzv-backend=spotrain-c10d",
        "--rdzv-endpoint=bert-rdzv.ml.svc:29400",
        "--rdzv-id=bert-g7",
        "--rdzv-conf=is_host=false,last_call_timeout=2",
        "--local-addr=10.0.3.7",
        "train.py",
        "--lr",
        "3e-4",
    ]
    assert plan.env_added == {
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "PYTHONUNBUFFERED": "1",
        "SPOTRAIN_STATE_DIR": "/tmp/spotrain-state/bert",  # the job's own
        "SPOTRAIN_CONTROL_PORT": "8470",
    }
    assert plan.env["PATH"] == "/usr/bin" and plan.env["POD_NAME"] == "bert-worker-3"
    assert plan.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert plan.control_server_argv == ["/venv/bin/python", "-m", "spotrain_trainer.server"]


def test_optional_settings() -> None:
    env = dict(POD_ENV)
    env.pop("POD_IP")
    env.pop("SPOTRAIN_RDZV_ID")
    env.update(
        {
            "SPOTRAIN_MAX_RESTARTS": "50",
            "SPOTRAIN_RDZV_CONF_EXTRA": "last_call_timeout=1, keep_alive_interval=1,",
            "SPOTRAIN_SHUTDOWN_TIMEOUT": "90",
            "SPOTRAIN_STATE_DIR": "/run/spotrain",
            "SPOTRAIN_CONTROL_PORT": "9000",
        }
    )
    plan = build_launch(env, ["pkg.train"], python="py", module=True, control_server=False)
    assert "--max-restarts=50" in plan.argv
    assert "--rdzv-id=bert" in plan.argv  # defaults to the job name
    assert "--rdzv-conf=is_host=false,last_call_timeout=1,keep_alive_interval=1" in plan.argv
    assert "--shutdown-timeout=90" in plan.argv
    assert not any(a.startswith("--local-addr") for a in plan.argv)
    assert plan.argv[-2:] == ["-m", "pkg.train"]
    assert plan.env_added["SPOTRAIN_STATE_DIR"] == "/run/spotrain"
    assert plan.env_added["SPOTRAIN_CONTROL_PORT"] == "9000"
    assert plan.control_server_argv is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SPOTRAIN_RDZV_ENDPOINT": None}, "SPOTRAIN_RDZV_ENDPOINT is required"),
        ({"SPOTRAIN_RDZV_ENDPOINT": "nohost"}, "not host:port"),
        ({"SPOTRAIN_RDZV_ENDPOINT": "h:99999"}, "not host:port"),
        ({"SPOTRAIN_MIN_NODES": "4", "SPOTRAIN_MAX_NODES": "2"}, "SPOTRAIN_MIN_NODES=4 is above"),
        ({"SPOTRAIN_NPROC_PER_NODE": "0"}, "SPOTRAIN_NPROC_PER_NODE"),
        ({"SPOTRAIN_MAX_NODES": "many"}, "SPOTRAIN_MAX_NODES"),
        ({"SPOTRAIN_RDZV_CONF_EXTRA": "oops"}, "SPOTRAIN_RDZV_CONF_EXTRA"),
    ],
)
def test_invalid_environment(change: dict[str, str | None], message: str) -> None:
    env = dict(POD_ENV)
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    with pytest.raises(ConfigError, match=message):
        build_launch(env, ["train.py"])


def test_no_script() -> None:
    with pytest.raises(ConfigError, match="no training script"):
        build_launch(POD_ENV, [])


def test_parse_args() -> None:
    assert parse_args(["--print", "--", "t.py", "--print"]) == (
        {"print": True, "control_server": True, "module": False},
        ["t.py", "--print"],
    )
    assert parse_args(["-m", "--no-control-server", "pkg.mod", "-x"])[1] == ["pkg.mod", "-x"]
    with pytest.raises(ConfigError, match="unknown option"):
        parse_args(["--bogus", "t.py"])


def test_print_shows_the_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in POD_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["--print", "--", "train.py", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in out
    assert "--nnodes=2:8" in out and "--rdzv-id=bert-g7" in out and out.rstrip().endswith("train.py --epochs 2")
    assert "spotrain_trainer.server" in out


def test_bad_environment_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SPOTRAIN_RDZV_ENDPOINT", raising=False)
    assert main(["train.py"]) == 2
    assert "SPOTRAIN_RDZV_ENDPOINT" in capsys.readouterr().err


EXEC_SCRIPT = """
import os
from spotrain_trainer.launch import build_launch, start_control_server
plan = build_launch(os.environ, ["unused.py"])
start_control_server(plan)
os.execvp("sleep", ["sleep", "300"])  # stands in for torchrun: same PID, exec'd like the real launcher
"""


def test_control_server_dies_with_the_process_that_execs_torchrun(tmp_path: Path) -> None:
    procs = ProcessSet(tmp_path / "logs")
    port = free_port()
    env = procs.env(
        {
            "SPOTRAIN_RDZV_ENDPOINT": "127.0.0.1:1",
            "SPOTRAIN_CONTROL_PORT": str(port),
            "SPOTRAIN_CONTROL_BIND": LOOPBACK,
            "SPOTRAIN_STATE_DIR": str(tmp_path / "state"),
            "POD_NAME": "p0",
        }
    )
    try:
        launcher = procs.spawn("launcher", [sys.executable, "-c", EXEC_SCRIPT], env=env)
        wait_for("control server up", lambda: port_open(LOOPBACK, port), timeout=60)
        assert http_json("GET", f"http://{LOOPBACK}:{port}/healthz")[0] == 200
        server_pids = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == launcher.pid]
        assert server_pids, "the control server is a child of the launcher (now `sleep`)"
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        wait_for("control server gone with its parent", lambda: not port_open(LOOPBACK, port), timeout=30)
        wait_for("control server process exited", lambda: not any(pid_alive(int(p)) for p in server_pids), timeout=30)
    finally:
        procs.kill_all()


def _ppid(pid: int) -> int:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return -1
    return int(data[data.rfind(b")") + 2 :].split()[1])


def test_help_lists_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    names = ("SPOTRAIN_RDZV_ENDPOINT", "SPOTRAIN_CHECKPOINT_URI", "SPOTRAIN_STAGING_DIR", "SPOTRAIN_NPROC_PER_NODE")
    assert all(name in out for name in names)
    assert "python -m spotrain_trainer.rendezvous" in out and "docs/trainer.md" in out


def test_waiting_for_an_unreachable_store_says_so_then_gives_up() -> None:
    now = [0.0]
    said: list[str] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(StoreUnreachable, match=r"127\.0\.0\.1:1 \(SPOTRAIN_RDZV_ENDPOINT\) did not answer for 60s"):
        wait_for_store(
            "127.0.0.1:1", 60.0, connect=lambda host, port: False, clock=lambda: now[0], sleep=sleep, say=said.append
        )
    assert said and all("waiting for the rendezvous store at 127.0.0.1:1" in line for line in said)
    attempts = iter([False, False, True])
    wait_for_store("h:2", 60.0, connect=lambda host, port: next(attempts), clock=lambda: now[0], sleep=sleep)


def test_an_unreachable_store_is_a_clear_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for key, value in POD_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SPOTRAIN_RDZV_ENDPOINT", f"{LOOPBACK}:{free_port()}")
    monkeypatch.setenv("SPOTRAIN_RDZV_WAIT_SECONDS", "0.5")
    monkeypatch.setenv("SPOTRAIN_STATE_DIR", str(tmp_path / "state"))
    assert main(["--no-control-server", "train.py"]) == 2
    assert "did not answer" in capsys.readouterr().err


def test_local_jobs_get_a_checkpoint_path_of_their_own() -> None:
    first = TrainerConfig.from_env({}, script="/home/me/train_gpt.py")
    second = TrainerConfig.from_env({}, script="examples/My Model.py")
    assert first.job_name == "local-train-gpt" and second.job_name == "local-my-model"
    assert first.checkpoint_uri != second.checkpoint_uri and first.checkpoint_uri.endswith("/local-train-gpt")
    assert build_launch({"SPOTRAIN_RDZV_ENDPOINT": "h:1"}, ["/x/train_gpt.py"]).argv[8] == "--rdzv-id=local-train-gpt"


def test_staging_falls_back_to_the_temporary_directory_and_says_so() -> None:
    unset = TrainerConfig.from_env({"POD_NAME": "p"})
    assert not unset.staging_dir_set and unset.staging_dir == Path(tempfile.gettempdir()) / "spotrain-staging" / "p"
    assert TrainerConfig.from_env({"SPOTRAIN_STAGING_DIR": "/staging"}).staging_dir_set


def test_a_notice_exit_is_not_logged_as_a_crash() -> None:
    def record(exitcode: int) -> logging.LogRecord:
        args = (exitcode, 0, 4242, "train.py")
        return logging.LogRecord(TORCHRUN_LOGGER, logging.ERROR, "api.py", 1, TORCHRUN_FAILED, args, None)

    notice, crash = record(EXIT_CHECKPOINTED_ON_NOTICE), record(1)
    assert NoticeExitFilter().filter(notice) and NoticeExitFilter().filter(crash)
    assert notice.levelno == logging.WARNING and "checkpoint on notice" in notice.getMessage()
    assert "exitcode: 75" in notice.getMessage()
    assert crash.levelno == logging.ERROR and crash.getMessage().startswith("failed (exitcode: 1)")
