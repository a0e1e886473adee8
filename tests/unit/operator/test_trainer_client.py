"""The operator's client for the workers' control endpoint: a worker is not trusted. Real HTTP on loopback, against
the trainer's own control server for the token, and against a hostile stand-in for the answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from spotrain_operator.control_auth import ControlKey
from spotrain_operator.trainer_client import MAX_ANSWER_BYTES, TrainerClient
from spotrain_protocol import TrainerStatus, parse_status
from spotrain_protocol.status import sanitize_status
from spotrain_trainer.server import ControlState, serve

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
status_like = st.fixed_dictionaries(
    {},
    optional={"step": json_values, "completed": json_values, "handled_request_id": json_values,
              "last_checkpoint": json_values | st.fixed_dictionaries(
                  {}, optional={k: json_values for k in ("step", "time", "uri", "request_id")}),
              "checkpoint_request": json_values | st.fixed_dictionaries({}, optional={"id": json_values})},
)


@given(st.one_of(json_values, status_like))
@settings(max_examples=300)
def test_any_json_gives_a_well_typed_status_or_none(body: Any) -> None:
    status = parse_status(json.dumps(body).encode())
    if not isinstance(body, dict):
        assert status is None
        return
    assert isinstance(status, TrainerStatus)
    assert status.step is None or (type(status.step) is int and status.step >= 0)
    assert status.checkpoint_step is None or type(status.checkpoint_step) is int
    for text in (status.checkpoint_time, status.checkpoint_uri, status.checkpoint_request_id,
                 status.pending_request_id, status.handled_request_id):
        assert text is None or isinstance(text, str)
    assert isinstance(status.completed, bool)


def test_garbage_and_deep_nesting_are_no_answer() -> None:
    assert parse_status(b"\xff\xfe") is None
    assert parse_status(b"[" * 100_000 + b"]" * 100_000) is None
    assert parse_status(b'{"a": ' * 50_000 + b"1" + b"}" * 50_000) is None


def test_what_the_core_reads_survives_the_schema() -> None:
    body = {"step": 130, "completed": False, "handled_request_id": "r1", "checkpoint_request": {"id": "r2"},
            "last_checkpoint": {"step": 120, "time": "2026-01-01T08:00:00Z", "uri": "s3://b/p", "request_id": "r1"}}
    assert parse_status(json.dumps(body).encode()) == TrainerStatus.from_json(body)


def test_wrong_types_are_dropped_field_by_field() -> None:
    clean = sanitize_status({"step": "12", "completed": "yes",
                             "last_checkpoint": {"step": True, "uri": "s3://b/k", "request_id": ["x"]},
                             "checkpoint_request": {"id": "r2", "reason": "spot"}, "handled_request_id": 7,
                             "extra": "x" * 1000})
    assert clean == {"step": None, "completed": None, "handled_request_id": None,
                     "last_checkpoint": {"step": None, "time": None, "uri": "s3://b/k", "request_id": None},
                     "checkpoint_request": {"id": "r2"}, "script_failures": None, "error": None,
                     "rendezvous_id": None}
    assert sanitize_status({"step": 2**70})["step"] is None  # type: ignore[index]
    assert sanitize_status({"last_checkpoint": {"uri": "x" * 100_000}})["last_checkpoint"]["uri"] is None  # type: ignore[index]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def status_from(handler: Handler) -> TrainerStatus | None:
    """What the client makes of a stand-in endpoint that answers /status with ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    client = TrainerClient(port)
    try:
        return await client.status("127.0.0.1")
    finally:
        await client.close()
        await runner.cleanup()


async def huge(_: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"step": 1, "pad": "' + b"x" * (MAX_ANSWER_BYTES * 4) + b'"}',
                        content_type="application/json")


async def streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no Content-Length to refuse it by
    await response.prepare(request)
    await response.write(b'{"step": 1, "pad": "')
    for _ in range(64):
        await response.write(b"x" * 65536)
    return response


@pytest.mark.parametrize("handler", [huge, streamed])
def test_a_huge_answer_is_no_answer(handler: Handler) -> None:
    assert asyncio.run(status_from(handler)) is None


def test_an_ill_typed_answer_reads_as_absent_fields() -> None:
    async def weird(_: web.Request) -> web.StreamResponse:
        return web.json_response({"step": {"nested": [1, 2]}, "completed": "no", "last_checkpoint": "s3://x"})

    assert asyncio.run(status_from(weird)) == TrainerStatus()


def test_the_token_opens_the_real_control_server(tmp_path: Path) -> None:
    key = ControlKey(b"k" * 32)
    token = key.token_for("job-uid-1")
    server = serve(ControlState(tmp_path / "state", job="j", pod="p", token=token), "127.0.0.1", 0)
    try:
        asyncio.run(_token_exchange(TrainerClient(server.port), key, token, tmp_path))
    finally:
        server.shutdown()
        server.server_close()


async def _token_exchange(client: TrainerClient, key: ControlKey, token: str, tmp_path: Path) -> None:
    try:
        assert await client.status("127.0.0.1") is None, "without the token"
        assert await client.status("127.0.0.1", key.token_for("another-job")) is None
        assert isinstance(await client.status("127.0.0.1", token), TrainerStatus)
        assert await client.request_checkpoints([("p", "127.0.0.1")], "r1", "spot", "2026-01-01T08:02:00Z") == \
            {"p": False}
        assert await client.request_checkpoints([("p", "127.0.0.1")], "r1", "spot", "2026-01-01T08:02:00Z",
                                                token) == {"p": True}
        # A request issued earlier (a deposed leader's, delayed) does not replace the pending one.
        assert not await client.request_checkpoint("127.0.0.1", "r0", "spot", "2026-01-01T08:02:00Z", token,
                                                   issued_at="2020-01-01T00:00:00Z")
        pending = json.loads((tmp_path / "state" / "request.json").read_text())
        assert pending["id"] == "r1" and pending["issued_at"].endswith("Z")
    finally:
        await client.close()


def test_tokens_are_per_job_and_per_key() -> None:
    a, b = ControlKey(b"a" * 32), ControlKey(b"b" * 32)
    assert a.token_for("u1") == a.token_for("u1")
    assert len({a.token_for("u1"), a.token_for("u2"), b.token_for("u1")}) == 3
    with pytest.raises(ValueError):
        ControlKey(b"short")
    assert "aaaa" not in repr(a)


def test_a_key_file_is_read_stripped(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("0123456789abcdef0123456789abcdef\n")
    assert ControlKey.from_file(tmp_path / "key").key == b"0123456789abcdef0123456789abcdef"


def test_the_client_drops_idle_connections_before_the_server_does() -> None:
    from spotrain_operator import trainer_client
    from spotrain_trainer import server

    assert trainer_client.KEEPALIVE_SECONDS < server.SOCKET_TIMEOUT


class _SecretsOf:
    """A CoreV1Api stand-in holding Secrets; ``race`` makes the first create lose to another replica's."""

    def __init__(self, race: bytes | None = None) -> None:
        self.stored: dict[tuple[str, str], dict[str, str]] = {}
        self.race = race

    def __call__(self, _api_client: object) -> _SecretsOf:
        return self

    def read_namespaced_secret(self, name: str, namespace: str, **_: object) -> object:
        from types import SimpleNamespace

        from kubernetes.client.rest import ApiException

        if (namespace, name) not in self.stored:
            raise ApiException(status=404)
        return SimpleNamespace(data=self.stored[(namespace, name)])

    def create_namespaced_secret(self, namespace: str, body: Any, **_: object) -> None:
        import base64

        from kubernetes.client.rest import ApiException

        if self.race is not None:  # another replica created it first
            self.stored[(namespace, body.metadata.name)] = {"key": base64.b64encode(self.race).decode()}
            self.race = None
            raise ApiException(status=409)
        self.stored[(namespace, body.metadata.name)] = dict(body.data)


def test_the_key_is_created_once_and_replicas_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from spotrain_operator import control_auth

    fake = _SecretsOf()
    monkeypatch.setattr(control_auth.client, "CoreV1Api", fake)
    first = control_auth.load_or_create_key(cast(Any, None), "spotrain-system")
    assert control_auth.load_or_create_key(cast(Any, None), "spotrain-system") == first
    assert list(fake.stored) == [("spotrain-system", "spotrain-control-key")]
    racing = _SecretsOf(race=b"w" * 64)
    monkeypatch.setattr(control_auth.client, "CoreV1Api", racing)
    assert control_auth.load_or_create_key(cast(Any, None), "ns").key == b"w" * 64, "the loser reads the winner's"
