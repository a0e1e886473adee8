"""The control endpoint against hostile clients: a token, bounded bodies, timeouts, a bounded thread count, and a
request slot that a stale or foreign request cannot take over. Raw sockets where http.client would be too polite."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spotrain_trainer import server as srvmod
from spotrain_trainer.server import ControlHTTPServer, ControlState, control_token, serve
from spotrain_trainer.statefiles import atomic_write_json, read_json

TOKEN = "s3cr3t-token-of-the-job"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ControlHTTPServer]:
    srv = serve(ControlState(tmp_path / "state", job="bert", pod="bert-w1", token=TOKEN), "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def call(srv: ControlHTTPServer, method: str, path: str, body: Any = None,
         token: str | None = TOKEN) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw[:1] == b"{" else raw.decode())
    finally:
        conn.close()


def raw_exchange(srv: ControlHTTPServer, data: bytes) -> bytes:
    """Sends bytes as they are and reads until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_line(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], TOKEN + "x"])
def test_checkpoint_and_status_need_the_token(secured: ControlHTTPServer, token: str | None) -> None:
    assert call(secured, "POST", "/checkpoint", {"id": "evil"}, token=token)[0] == 401
    # nobody without the token points the agent at another store
    assert call(secured, "POST", "/rendezvous", {"id": "evil", "endpoint": "10.6.6.6:29400", "round": 9},
                token=token)[0] == 401
    assert call(secured, "GET", "/status", token=token)[0] == 401
    assert not secured.state.request_path.exists()


def test_the_token_opens_checkpoint_and_status(secured: ControlHTTPServer) -> None:
    assert call(secured, "POST", "/checkpoint", {"id": "op-1"})[0] == 202
    assert call(secured, "GET", "/status")[1]["checkpoint_request"]["id"] == "op-1"


def test_probes_and_metrics_stay_open(secured: ControlHTTPServer) -> None:
    assert call(secured, "GET", "/healthz", token=None) == (200, "ok\n")
    assert call(secured, "GET", "/metrics", token=None)[0] == 200


def test_the_token_comes_from_env_or_file(tmp_path: Path) -> None:
    assert control_token({}) is None
    assert control_token({"SPOTRAIN_CONTROL_TOKEN": " abc\n"}) == "abc"
    (tmp_path / "token").write_text("from-file\n")
    assert control_token({"SPOTRAIN_CONTROL_TOKEN_FILE": str(tmp_path / "token")}) == "from-file"


def test_an_older_request_cannot_replace_a_pending_newer_one(secured: ControlHTTPServer) -> None:
    newer = {"id": "op-2", "issued_at": "2026-01-01T08:00:10Z", "deadline": "2026-01-01T08:02:00Z"}
    older = {"id": "op-1", "issued_at": "2026-01-01T08:00:00Z", "deadline": "2026-01-01T08:01:00Z"}
    assert call(secured, "POST", "/checkpoint", newer)[0] == 202
    code, body = call(secured, "POST", "/checkpoint", older)
    assert code == 409 and body["pending"] == "op-2" and body["accepted"] is False
    code, body = call(secured, "POST", "/checkpoint", {"id": "undated"})
    assert code == 409 and body["pending"] == "op-2"
    assert read_json(secured.state.request_path)["id"] == "op-2"  # type: ignore[index]
    latest = {"id": "op-3", "issued_at": "2026-01-01T08:00:20Z"}
    assert call(secured, "POST", "/checkpoint", latest)[0] == 202
    assert read_json(secured.state.request_path)["id"] == "op-3"  # type: ignore[index]


def test_once_handled_any_new_request_is_taken(secured: ControlHTTPServer) -> None:
    assert call(secured, "POST", "/checkpoint", {"id": "op-2", "issued_at": "2026-01-01T08:00:10Z"})[0] == 202
    atomic_write_json(secured.state.status_path, {"phase": "training", "handled_request_id": "op-2"})
    assert call(secured, "POST", "/checkpoint", {"id": "op-9", "issued_at": "2026-01-01T07:00:00Z"})[0] == 202
    assert read_json(secured.state.request_path)["id"] == "op-9"  # type: ignore[index]


def test_bad_issued_at_is_refused(secured: ControlHTTPServer) -> None:
    assert call(secured, "POST", "/checkpoint", {"id": "a", "issued_at": "yesterday"})[0] == 400
    assert call(secured, "POST", "/checkpoint", {"id": "a", "issued_at": 5})[0] == 400


AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


@pytest.mark.parametrize("headers, expected", [
    (b"Content-Length: -1\r\n", 400),
    (b"Content-Length: +5\r\n", 400),
    (b"Content-Length: 1e3\r\n", 400),
    (b"Content-Length: 99999999999\r\n", 413),
    (f"Content-Length: {srvmod.MAX_BODY + 1}\r\n".encode(), 413),
    (b"", 411),  # no Content-Length
    (b"Transfer-Encoding: chunked\r\n", 411),
])
def test_body_limits_hold_for_every_length_header(secured: ControlHTTPServer, headers: bytes, expected: int) -> None:
    answer = raw_exchange(secured, b"POST /checkpoint HTTP/1.1\r\nHost: x\r\n" + AUTH + headers + b"\r\n")
    assert status_line(answer) == expected
    assert not secured.state.request_path.exists()


def test_a_get_with_a_huge_body_is_refused_too(secured: ControlHTTPServer) -> None:
    answer = raw_exchange(secured, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
    assert status_line(answer) == 413


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /status HTTP/9.9\r\n\r\n",
    b"POST /checkpoint HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
    b"BREW /coffee HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_garbage_gets_4xx_or_5xx_and_the_server_keeps_serving(secured: ControlHTTPServer, garbage: bytes) -> None:
    answer = raw_exchange(secured, garbage)
    assert answer == b"" or 400 <= status_line(answer) < 600
    assert call(secured, "GET", "/healthz", token=None) == (200, "ok\n")
    assert not secured.state.request_path.exists()


def test_a_short_body_is_refused(secured: ControlHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(srvmod._Handler, "timeout", 0.5)
    with socket.create_connection(("127.0.0.1", secured.port), timeout=10) as sock:
        sock.sendall(b"POST /checkpoint HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 100\r\n\r\n{\"id\"")
        # The server gives up on the body after its socket timeout and closes without acting: EOF.
        assert sock.recv(65536) == b""
    assert call(secured, "GET", "/healthz", token=None) == (200, "ok\n")
    assert not secured.state.request_path.exists()


def test_idle_connections_are_dropped(secured: ControlHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(srvmod._Handler, "timeout", 0.2)
    with socket.create_connection(("127.0.0.1", secured.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTT")  # never finished
        assert sock.recv(1024) == b"", "the server closes an idle connection (recv sees EOF)"


def test_connections_past_the_cap_are_closed_and_the_rest_served(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(srvmod, "MAX_CONNECTIONS", 2)
    srv = serve(ControlState(tmp_path / "s", job="j", pod="p"), "127.0.0.1", 0)
    hogs = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
    try:
        for hog in hogs:  # both hogs hold a thread: each got an answer on its kept-alive connection
            hog.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert hog.recv(1024).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as third:
            try:
                third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = third.recv(1024)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", "a third connection is closed at accept"
    finally:
        for hog in hogs:
            hog.close()
    # With the hogs gone their slots come back; wait for that positive sign rather than sleeping.
    give_up = time.monotonic() + 30
    while True:
        try:
            if call(srv, "GET", "/healthz", token=None)[0] == 200:
                break
        except (ConnectionError, http.client.HTTPException):
            if time.monotonic() > give_up:
                pytest.fail("the server did not serve again once the hogs left")
            time.sleep(0.05)
    srv.shutdown()
    srv.server_close()
