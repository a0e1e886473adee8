"""HTTP client for the workers' control endpoint (spotrain_trainer's control server, one per pod)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp

from spotrain_operator.core.reconcile import TrainerStatus

log = logging.getLogger("spotrain.trainer_client")
TIMEOUT = aiohttp.ClientTimeout(total=2.0, connect=1.0)


class TrainerClient:
    def __init__(self, port: int):
        self.port = port
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    async def status(self, ip: str) -> TrainerStatus | None:
        """None when the endpoint cannot be reached: between rendezvous rounds, or on a dead node."""
        try:
            async with self._http().get(f"http://{ip}:{self.port}/status") as response:
                if response.status != 200:
                    return None
                return TrainerStatus.from_json(await response.json())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def statuses(self, pods: Iterable[tuple[str, str]]) -> dict[str, TrainerStatus | None]:
        pairs = list(pods)
        results = await asyncio.gather(*(self.status(ip) for _, ip in pairs))
        return {name: result for (name, _), result in zip(pairs, results, strict=True)}

    async def request_checkpoint(self, ip: str, request_id: str, reason: str, deadline: str) -> bool:
        body = {"id": request_id, "reason": reason, "deadline": deadline}
        try:
            async with self._http().post(f"http://{ip}:{self.port}/checkpoint", json=body) as response:
                return response.status in (200, 202)
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def request_checkpoints(self, pods: Iterable[tuple[str, str]], request_id: str, reason: str,
                                  deadline: str) -> dict[str, bool]:
        pairs = list(pods)
        results = await asyncio.gather(*(self.request_checkpoint(ip, request_id, reason, deadline) for _, ip in pairs))
        return {name: ok for (name, _), ok in zip(pairs, results, strict=True)}
