"""HTTP client for the workers' control endpoint (spotrain_trainer's control server, one per pod).

A worker is not trusted: its answer is read up to ``MAX_ANSWER_BYTES`` and parsed by spotrain_protocol.parse_status,
which checks it field by field. An answer that is too big, is not a JSON object, or nests too deep counts as no
answer (the endpoint is treated as unreachable); a field of the wrong type is dropped. Nothing a worker sends can
raise in the reconcile or hold much of the operator's memory.

With the job's token (``control_auth``), every call carries ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp

from spotrain_protocol import CheckpointRequest, RendezvousMove, TrainerStatus, parse_status
from spotrain_protocol.constants import CHECKPOINT_PATH, RENDEZVOUS_PATH, STATUS_PATH, authorization

log = logging.getLogger("spotrain.trainer_client")
TIMEOUT = aiohttp.ClientTimeout(total=2.0, connect=1.0)
# Under the control server's idle timeout (spotrain_trainer.server.SOCKET_TIMEOUT, 10 s): the client lets an idle
# connection go first, so it never reuses one the server is closing.
KEEPALIVE_SECONDS = 5.0
# A real /status is about 2 KiB.
MAX_ANSWER_BYTES = 64 * 1024


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
            async with self._http().get(f"http://{ip}:{self.port}{STATUS_PATH}",
                                        headers=authorization(token)) as response:
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

    async def _post(self, ip: str, path: str, body: dict[str, Any], token: str | None) -> bool:
        """POSTs ``body`` to one pod's control endpoint; whether the pod accepted it."""
        try:
            async with self._http().post(f"http://{ip}:{self.port}{path}", json=body,
                                         headers=authorization(token)) as response:
                self._note_refusal(ip, response.status)
                return response.status in (200, 202)
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _post_to_all(self, pods: Iterable[tuple[str, str]], path: str, body: dict[str, Any],
                           token: str | None) -> dict[str, bool]:
        pairs = list(pods)
        results = await asyncio.gather(*(self._post(ip, path, body, token) for _, ip in pairs))
        return {name: ok for (name, _), ok in zip(pairs, results, strict=True)}

    async def request_checkpoint(self, ip: str, request_id: str, reason: str, deadline: str,
                                 token: str | None = None, issued_at: str | None = None) -> bool:
        body = CheckpointRequest(id=request_id, reason=reason, deadline=deadline, issued_at=issued_at or _now())
        return await self._post(ip, CHECKPOINT_PATH, body.to_json(), token)

    async def request_checkpoints(self, pods: Iterable[tuple[str, str]], request_id: str, reason: str,
                                  deadline: str, token: str | None = None) -> dict[str, bool]:
        """One request to every pod, all stamped with the same ``issued_at``: a worker keeps a pending request
        over any other issued earlier (spotrain_trainer.server)."""
        body = CheckpointRequest(id=request_id, reason=reason, deadline=deadline, issued_at=_now())
        return await self._post_to_all(pods, CHECKPOINT_PATH, body.to_json(), token)

    async def move_rendezvous(self, pods: Iterable[tuple[str, str]], move: RendezvousMove,
                              token: str | None = None) -> dict[str, bool]:
        """Tells every pod where the rendezvous store moved (their agents re-join there)."""
        return await self._post_to_all(pods, RENDEZVOUS_PATH, move.to_json(), token)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
