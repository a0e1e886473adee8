"""HTTP client for the workers' control endpoint (spotrain_trainer's control server, one per pod).

A worker is not trusted: its answer is read up to ``MAX_ANSWER_BYTES`` and checked field by field against
``STATUS_FIELDS`` before the core sees it. An answer that is too big, is not a JSON object, or nests too deep counts
as no answer (the endpoint is treated as unreachable); a field of the wrong type is dropped. Nothing a worker
sends can raise in the reconcile or hold much of the operator's memory.

With the job's token (``control_auth``), every call carries ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from spotrain_operator.core.reconcile import TrainerStatus

log = logging.getLogger("spotrain.trainer_client")
TIMEOUT = aiohttp.ClientTimeout(total=2.0, connect=1.0)
# Under the control server's idle timeout (spotrain_trainer.server.SOCKET_TIMEOUT, 10 s): the client lets an idle
# connection go first, so it never reuses one the server is closing.
KEEPALIVE_SECONDS = 5.0
# A real /status is about 2 KiB.
MAX_ANSWER_BYTES = 64 * 1024
MAX_TEXT = 2048
MAX_INT = 2**63 - 1

# The fields of GET /status the operator reads (TrainerStatus.from_json), and their types: a type, or a nested
# object of its own fields. Everything else is dropped; a field of another type reads as absent (None).
Schema = dict[str, "type | Schema"]
STATUS_SCHEMA: Schema = {
    "step": int,
    "completed": bool,
    "handled_request_id": str,
    "last_checkpoint": {"step": int, "time": str, "uri": str, "request_id": str},
    "checkpoint_request": {"id": str},
}


def _checked(value: Any, kind: type | Schema) -> Any:
    if isinstance(kind, dict):
        return _object(value, kind)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT
    elif kind is str:
        ok = isinstance(value, str) and len(value) <= MAX_TEXT
    else:
        ok = isinstance(value, kind)
    return value if ok else None


def _object(value: Any, schema: Schema) -> dict[str, Any] | None:
    return {k: _checked(value.get(k), kind) for k, kind in schema.items()} if isinstance(value, Mapping) else None


def sanitize_status(body: Any) -> dict[str, Any] | None:
    """The parts of a /status answer the operator uses, each of the right type; None for a non-object."""
    return _object(body, STATUS_SCHEMA)


def parse_status(raw: bytes) -> TrainerStatus | None:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    clean = sanitize_status(body)
    return None if clean is None else TrainerStatus.from_json(clean)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class TrainerClient:
    def __init__(self, port: int):
        self.port = port
        self._session: aiohttp.ClientSession | None = None
        self._refused: set[str] = set()  # endpoints that refused the token, warned about once

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=TIMEOUT, connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_SECONDS))
        return self._session

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    def _note_refusal(self, ip: str, status: int) -> None:
        if status == 401 and ip not in self._refused:
            self._refused.add(ip)
            log.warning("control endpoint %s refused the job's token (control key changed since the pod started?); "
                        "treated as unreachable", ip)

    async def status(self, ip: str, token: str | None = None) -> TrainerStatus | None:
        """None when the endpoint cannot be reached (between rendezvous rounds, on a dead node), refuses the
        token, or answers something that is not a bounded /status."""
        try:
            async with self._http().get(f"http://{ip}:{self.port}/status", headers=_auth(token)) as response:
                if response.status != 200:
                    self._note_refusal(ip, response.status)
                    return None
                if (response.content_length or 0) > MAX_ANSWER_BYTES:
                    return None
                raw = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(raw) > MAX_ANSWER_BYTES:
                    return None
                return parse_status(raw)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def statuses(self, pods: Iterable[tuple[str, str]],
                       token: str | None = None) -> dict[str, TrainerStatus | None]:
        pairs = list(pods)
        results = await asyncio.gather(*(self.status(ip, token) for _, ip in pairs))
        return {name: result for (name, _), result in zip(pairs, results, strict=True)}

    async def request_checkpoint(self, ip: str, request_id: str, reason: str, deadline: str,
                                 token: str | None = None, issued_at: str | None = None) -> bool:
        body = {"id": request_id, "reason": reason, "deadline": deadline, "issued_at": issued_at or _now()}
        try:
            async with self._http().post(f"http://{ip}:{self.port}/checkpoint", json=body,
                                         headers=_auth(token)) as response:
                self._note_refusal(ip, response.status)
                return response.status in (200, 202)
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def request_checkpoints(self, pods: Iterable[tuple[str, str]], request_id: str, reason: str,
                                  deadline: str, token: str | None = None) -> dict[str, bool]:
        """One request to every pod, all stamped with the same ``issued_at``: a worker keeps a pending request
        over any other issued earlier (spotrain_trainer.server)."""
        pairs = list(pods)
        issued_at = _now()
        results = await asyncio.gather(*(self.request_checkpoint(ip, request_id, reason, deadline, token, issued_at)
                                         for _, ip in pairs))
        return {name: ok for (name, _), ok in zip(pairs, results, strict=True)}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
