"""The messages that are not /status: the checkpoint request and the rendezvous move the operator POSTs to a
worker, and the completion record a trainer leaves as its container's termination message."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

MAX_REQUEST_ID = 256
DEFAULT_REASON = "request"
#: The value of the ``spotrain`` key that makes a termination message a completion record.
COMPLETED = "completed"


class InvalidMessage(ValueError):
    """A message that does not follow the protocol; the text names the field at fault."""


def parse_rfc3339(field: str, value: Any) -> datetime.datetime:
    """An RFC 3339 time with a zone (``Z`` or an offset); InvalidMessage naming ``field`` otherwise."""
    if not isinstance(value, str):
        raise InvalidMessage(f"{field} must be an RFC3339 string")
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidMessage(f"{field} {value!r} is not RFC3339") from exc
    if parsed.tzinfo is None:
        raise InvalidMessage(f"{field} {value!r} has no time zone")
    return parsed


def _message_id(obj: Mapping[str, Any]) -> str:
    """The ``id`` every message carries: a non-empty string of at most MAX_REQUEST_ID characters."""
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid.strip() or len(rid) > MAX_REQUEST_ID:
        raise InvalidMessage(f"id must be a non-empty string (at most {MAX_REQUEST_ID} characters)")
    return rid


def _decode(body: bytes) -> Any:
    """A raw request body as JSON (an empty one is null); InvalidMessage when it is not JSON."""
    try:
        return json.loads(body or b"null")
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from exc


@dataclass(frozen=True)
class CheckpointRequest:
    """The body of ``POST /checkpoint``: take a coordinated checkpoint, by ``deadline`` if one is given.

    ``issued_at`` orders requests: the control server lets a pending request be replaced only by one issued later.
    """

    id: str
    reason: str = DEFAULT_REASON
    deadline: str | None = None  # RFC 3339
    issued_at: str | None = None  # RFC 3339

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "reason": self.reason, "deadline": self.deadline}
        if self.issued_at is not None:
            body["issued_at"] = self.issued_at
        return body

    @classmethod
    def from_json(cls, obj: Any) -> CheckpointRequest:
        """A decoded body, checked; InvalidMessage names the field at fault. An empty reason reads as
        ``DEFAULT_REASON``."""
        if not isinstance(obj, Mapping):
            raise InvalidMessage("body must be a JSON object")
        rid = _message_id(obj)
        reason = obj.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise InvalidMessage("reason must be a string")
        deadline = obj.get("deadline")
        if deadline is not None:
            parse_rfc3339("deadline", deadline)
        issued_at = obj.get("issued_at")
        if issued_at is not None:
            parse_rfc3339("issued_at", issued_at)
        return cls(id=rid, reason=reason or DEFAULT_REASON, deadline=deadline, issued_at=issued_at)

    @classmethod
    def from_body(cls, body: bytes) -> CheckpointRequest:
        """A raw request body (an empty one is JSON null); InvalidMessage for anything else than a request."""
        return cls.from_json(_decode(body))


@dataclass(frozen=True)
class RendezvousMove:
    """The body of ``POST /rendezvous``: the job's rendezvous store moved (its node got a notice, was cordoned, or
    its pool left the spec), and the worker's agent re-joins the next round on the new store, in the same pod.

    ``id`` is the new round's rendezvous (torchrun run) id, ``endpoint`` the new store's ``host:port``, ``round``
    the job's round number: a worker ignores a move to a round older than the one it has.
    """

    id: str
    endpoint: str
    round: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint": self.endpoint, "round": self.round}

    @classmethod
    def from_json(cls, obj: Any) -> RendezvousMove:
        """A decoded body, checked; InvalidMessage names the field at fault."""
        if not isinstance(obj, Mapping):
            raise InvalidMessage("body must be a JSON object")
        rid = _message_id(obj)
        endpoint = obj.get("endpoint")
        if not isinstance(endpoint, str) or len(endpoint) > 512:
            raise InvalidMessage("endpoint must be a host:port string")
        host, sep, port = endpoint.rpartition(":")
        if not (sep and host.strip() and port.isdigit() and 0 < int(port) < 65536):
            raise InvalidMessage("endpoint must be host:port with a port from 1 to 65535")
        round_ = obj.get("round")
        if not isinstance(round_, int) or isinstance(round_, bool) or round_ < 1:
            raise InvalidMessage("round must be a positive integer")
        return cls(id=rid, endpoint=endpoint, round=round_)

    @classmethod
    def from_body(cls, body: bytes) -> RendezvousMove:
        return cls.from_json(_decode(body))


@dataclass(frozen=True)
class CheckpointRef:
    """A durable checkpoint, as a completion record names it."""

    step: int | None = None
    uri: str | None = None
    time: str | None = None  # RFC 3339


@dataclass(frozen=True)
class CompletionRecord:
    """The termination message of a trainer whose job completed: ``{"spotrain": "completed", "step": N,
    "checkpoint": {"step": N, "uri": ..., "time": ...}}``. Once the workers are gone it is the only account of the
    final checkpoint, so the operator takes that from here."""

    step: int | None = None
    checkpoint: CheckpointRef | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"spotrain": COMPLETED, "step": self.step}
        if self.checkpoint is not None:
            record["checkpoint"] = asdict(self.checkpoint)
        return record

    def to_message(self) -> str:
        return json.dumps(self.to_json())

    @classmethod
    def from_message(cls, message: str) -> CompletionRecord | None:
        """The record in a termination message, when the message is exactly one; None for anything else (a crash
        log that merely mentions "completed" is not one). A field of the wrong type reads as absent."""
        try:
            obj = json.loads(message)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, Mapping) or obj.get("spotrain") != COMPLETED:
            return None
        checkpoint = obj.get("checkpoint")
        return cls(
            step=_count(obj.get("step")),
            checkpoint=CheckpointRef(step=_count(checkpoint.get("step")), uri=_text(checkpoint.get("uri")),
                                     time=_text(checkpoint.get("time")))
            if isinstance(checkpoint, Mapping) else None,
        )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
