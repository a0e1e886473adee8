"""A minimal HTTP client for link-local metadata services: stdlib only, never through a proxy, bounded reads.

Non-2xx answers are returned (the callers give 404 and 401 a meaning); anything that is not an HTTP answer
(refused, reset, timed out, unparseable) raises ``MetadataError``.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spotrain_operator.agent.interruption import MetadataError

MAX_BODY = 1 << 20  # a metadata document is a few hundred bytes; refuse to buffer a flood

# Proxies from the environment must never see metadata requests (they carry credentials-adjacent tokens and
# the services are link-local anyway).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 2.0,
) -> Response:
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Response(resp.status, _lower(resp.headers.items()), _read(resp))
    except urllib.error.HTTPError as e:
        try:
            data = _read(e)
        except (OSError, http.client.HTTPException):
            data = b""
        return Response(e.code, _lower(e.headers.items()) if e.headers else {}, data)
    except TimeoutError as e:
        raise MetadataError(f"{method} {url}: timed out after {timeout:g} s") from e
    except urllib.error.URLError as e:
        raise MetadataError(f"{method} {url}: {e.reason}") from e
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise MetadataError(f"{method} {url}: {type(e).__name__}: {e}") from e


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def _read(resp: object) -> bytes:
    read = getattr(resp, "read", None)
    if read is None:
        return b""
    data: bytes = read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise MetadataError(f"response larger than {MAX_BODY} bytes")
    return data
