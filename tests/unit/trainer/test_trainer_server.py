"""The control server's HTTP contract, against a real server bound to 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spotrain_dev.trainer_harness import http_json
from spotrain_trainer.server import ControlHTTPServer, ControlState, serve
from spotrain_trainer.statefiles import atomic_write_json, read_json


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlHTTPServer]:
    srv = serve(ControlState(tmp_path / "state", job="bert", pod="bert-w1", namespace="ml"), "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def url(srv: ControlHTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{srv.port}{path}"


def worker_status(srv: ControlHTTPServer, **fields: Any) -> None:
    base = {"phase": "training", "step": 120, "world_size": 4, "updated_unix": time.time()}
    atomic_write_json(srv.state.status_path, {**base, **fields})


def test_status_before_any_worker(server: ControlHTTPServer) -> None:
    code, body = http_json("GET", url(server, "/status"))
    assert code == 200
    assert body["job"] == "bert" and body["pod"] == "bert-w1" and body["namespace"] == "ml"
    assert body["phase"] == "starting" and body["completed"] is False
    assert body["step"] is None and body["last_checkpoint"] is None and body["checkpoint_request"] is None
    for key in ("world_size", "rendezvous_round", "steps_per_second", "handled_request_id"):
        assert key in body


def test_post_checkpoint_then_handled(server: ControlHTTPServer) -> None:
    req = {"id": "notice-1", "reason": "spot-itn", "deadline": "2026-01-01T08:22:00Z"}
    code, body = http_json("POST", url(server, "/checkpoint"), req)
    assert (code, body) == (202, {"accepted": True, "id": "notice-1"})
    written = read_json(server.state.request_path)
    assert written is not None and written["id"] == "notice-1" and written["reason"] == "spot-itn"
    assert written["deadline"] == "2026-01-01T08:22:00Z" and written["received_at"].endswith("Z")

    code, body = http_json("POST", url(server, "/checkpoint"), req)
    assert code == 202 and body["duplicate"] is True
    assert read_json(server.state.request_path) == written, "the same id does not rewrite the request"

    worker_status(server)
    status = http_json("GET", url(server, "/status"))[1]
    assert status["checkpoint_request"]["id"] == "notice-1" and status["checkpoint_request"]["reason"] == "spot-itn"

    last = {"step": 130, "uri": "s3://b/p/step-000000130", "time": "2026-01-01T08:21:00.000Z",
            "unix_time": time.time() - 5, "duration_seconds": 1.5, "bytes": 1000, "request_id": "notice-1"}
    worker_status(server, handled_request_id="notice-1", last_checkpoint=last, phase="starting")
    status = http_json("GET", url(server, "/status"))[1]
    assert status["checkpoint_request"] is None
    assert status["last_checkpoint"]["request_id"] == "notice-1" and status["handled_request_id"] == "notice-1"
    assert 4 <= status["last_checkpoint_age_seconds"] < 60

    code, body = http_json("POST", url(server, "/checkpoint"), req)
    assert code == 202 and body["handled"] is True

    code, body = http_json("POST", url(server, "/checkpoint"), {"id": "notice-2"})
    assert code == 202 and body == {"accepted": True, "id": "notice-2"}
    assert http_json("GET", url(server, "/status"))[1]["checkpoint_request"]["id"] == "notice-2"


@pytest.mark.parametrize("body", [b"{", b'{"reason": "x"}', b'{"id": "a", "deadline": "soon"}'])
def test_bad_requests(server: ControlHTTPServer, body: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/checkpoint", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400
    assert json.loads(resp.read())["accepted"] is False
    assert not server.state.request_path.exists()


def test_unknown_paths_and_health(server: ControlHTTPServer) -> None:
    assert http_json("GET", url(server, "/nope"))[0] == 404
    assert http_json("POST", url(server, "/status"), {})[0] == 404
    assert http_json("GET", url(server, "/healthz")) == (200, "ok\n")


def test_metrics(server: ControlHTTPServer) -> None:
    last = {"step": 90, "unix_time": time.time() - 30, "duration_seconds": 2.5, "bytes": 4096, "stall_seconds": 0.25}
    worker_status(
        server,
        steps_per_second=3.5,
        last_checkpoint=last,
        checkpoints_total={"regular": 4, "notice": 1, "final": 0},
        checkpoint_failures_total=2,
        stall_seconds_total=1.25,
        checkpoint_interval_seconds=120.0,
        restart_count=3,
    )
    code, text = http_json("GET", url(server, "/metrics"))
    assert code == 200 and isinstance(text, str)
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    lv = 'job="bert",pod="bert-w1"'
    assert lines[f"spotrain_trainer_step{{{lv}}}"] == 120
    assert lines[f"spotrain_trainer_steps_per_second{{{lv}}}"] == 3.5
    assert lines[f"spotrain_trainer_world_size{{{lv}}}"] == 4
    assert lines[f"spotrain_trainer_last_checkpoint_step{{{lv}}}"] == 90
    assert 29 <= lines[f"spotrain_trainer_last_checkpoint_age_seconds{{{lv}}}"] < 120
    assert lines[f"spotrain_trainer_last_checkpoint_duration_seconds{{{lv}}}"] == 2.5
    assert lines[f"spotrain_trainer_last_checkpoint_bytes{{{lv}}}"] == 4096
    assert lines[f"spotrain_trainer_last_checkpoint_stall_seconds{{{lv}}}"] == 0.25
    assert lines[f"spotrain_trainer_checkpoint_stall_seconds_total{{{lv}}}"] == 1.25
    assert lines['spotrain_trainer_checkpoints_total{job="bert",kind="regular",pod="bert-w1"}'] == 4
    assert lines[f"spotrain_trainer_checkpoint_failures_total{{{lv}}}"] == 2
    assert lines['spotrain_trainer_phase{job="bert",phase="training",pod="bert-w1"}'] == 1
    assert lines['spotrain_trainer_phase{job="bert",phase="failed",pod="bert-w1"}'] == 0
    assert lines[f"spotrain_trainer_checkpoint_request_pending{{{lv}}}"] == 0
    assert lines[f"spotrain_trainer_restart_count{{{lv}}}"] == 3


def test_torn_or_foreign_status_file_is_tolerated(server: ControlHTTPServer) -> None:
    server.state.status_path.write_text("{not json")
    body = http_json("GET", url(server, "/status"))[1]
    assert body["phase"] == "starting"
    atomic_write_json(server.state.status_path, {"phase": "dancing"})
    assert http_json("GET", url(server, "/status"))[1]["phase"] == "starting"


def test_post_rendezvous_records_the_newest_move(server: ControlHTTPServer) -> None:
    move = {"id": "job-g2", "endpoint": "10.0.3.7:29400", "round": 2}
    code, body = http_json("POST", url(server, "/rendezvous"), move)
    assert (code, body) == (202, {"accepted": True, "id": "job-g2"})
    assert read_json(server.state.rendezvous_path) == move
    code, body = http_json("POST", url(server, "/rendezvous"), move)
    assert code == 202 and body["duplicate"] is True
    code, body = http_json("POST", url(server, "/rendezvous"), {**move, "id": "job-g1", "round": 1})
    assert code == 409 and body["pending"] == "job-g2", "an older move does not undo a newer one"
    for bad, field in (({**move, "endpoint": "10.0.3.7"}, "endpoint"), ({**move, "round": 0}, "round"),
                       ({**move, "id": ""}, "id")):
        code, body = http_json("POST", url(server, "/rendezvous"), bad)
        assert code == 400 and body["error"].startswith(field), body
    assert read_json(server.state.rendezvous_path) == move
