"""``GET /status`` of a worker's control endpoint: the keys the operator reads, and :class:`TrainerStatus`, what it
makes of an answer.

A worker is not trusted: an answer is checked field by field against ``STATUS_SCHEMA`` (an integer must be a
count that fits in 63 bits, a text at most ``MAX_TEXT`` characters) and a field of another type reads as absent.
An answer that is not a JSON object, or nests too deep to parse, is no answer (None). Nothing a worker sends can
raise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_TEXT = 2048
MAX_INT = 2**63 - 1

# -- keys of the /status object (the control server adds more; these are the ones the operator reads) ------
STEP = "step"
COMPLETED = "completed"
HANDLED_REQUEST_ID = "handled_request_id"  # the last checkpoint request the pod made durable
LAST_CHECKPOINT = "last_checkpoint"  # an object: CHECKPOINT_* below
CHECKPOINT_REQUEST = "checkpoint_request"  # the pending request, an object (REQUEST_ID), or null
SCRIPT_FAILURES = "script_failures"  # the training script's own crashes in this pod, across restarts
ERROR = "error"  # the last of them
RENDEZVOUS_ID = "rendezvous_id"  # the rendezvous (torchrun run id) the worker processes now train in
# keys of last_checkpoint
CHECKPOINT_STEP = "step"
CHECKPOINT_TIME = "time"
CHECKPOINT_URI = "uri"
CHECKPOINT_REQUEST_ID = "request_id"  # the request this checkpoint answered
# key of checkpoint_request
REQUEST_ID = "id"

# The fields the operator reads and their types: a type, or a nested object of its own fields.
Schema = dict[str, "type | Schema"]
STATUS_SCHEMA: Schema = {
    STEP: int,
    COMPLETED: bool,
    HANDLED_REQUEST_ID: str,
    LAST_CHECKPOINT: {CHECKPOINT_STEP: int, CHECKPOINT_TIME: str, CHECKPOINT_URI: str, CHECKPOINT_REQUEST_ID: str},
    CHECKPOINT_REQUEST: {REQUEST_ID: str},
    SCRIPT_FAILURES: int,
    ERROR: str,
    RENDEZVOUS_ID: str,
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
    """The parts of a /status answer the operator uses, each of the right type (else None); None for a
    non-object."""
    return _object(body, STATUS_SCHEMA)


@dataclass(frozen=True)
class TrainerStatus:
    """What a worker's control endpoint reports (GET /status), as the operator reads it."""

    step: int | None = None
    checkpoint_step: int | None = None
    checkpoint_time: str | None = None
    checkpoint_uri: str | None = None
    checkpoint_request_id: str | None = None  # the request the last durable checkpoint answered
    completed: bool = False
    pending_request_id: str | None = None  # a request the pod holds but has not made durable yet
    handled_request_id: str | None = None
    script_failures: int | None = None  # the training script's own crashes in this pod, across restarts
    error: str | None = None  # the last of them
    rendezvous_id: str | None = None  # the rendezvous the worker processes train in (after a move: the new one)

    def knows(self, request_id: str) -> bool:
        """The pod holds this checkpoint request, or has already answered it."""
        return request_id in (self.pending_request_id, self.handled_request_id, self.checkpoint_request_id)

    @classmethod
    def from_json(cls, body: Any) -> TrainerStatus:
        """The status a decoded /status object reports; every field that is missing or fails ``STATUS_SCHEMA``
        reads as absent (a non-object reads as an empty status)."""
        clean = sanitize_status(body) or {}
        last = clean.get(LAST_CHECKPOINT) or {}
        pending = clean.get(CHECKPOINT_REQUEST) or {}
        return cls(
            step=clean.get(STEP),
            checkpoint_step=last.get(CHECKPOINT_STEP),
            checkpoint_time=last.get(CHECKPOINT_TIME),
            checkpoint_uri=last.get(CHECKPOINT_URI),
            checkpoint_request_id=last.get(CHECKPOINT_REQUEST_ID),
            completed=clean.get(COMPLETED) is True,
            pending_request_id=pending.get(REQUEST_ID),
            handled_request_id=clean.get(HANDLED_REQUEST_ID),
            script_failures=clean.get(SCRIPT_FAILURES),
            error=clean.get(ERROR),
            rendezvous_id=clean.get(RENDEZVOUS_ID),
        )

    def to_json(self) -> dict[str, Any]:
        """The /status object that reads back as this status (what a stand-in endpoint answers)."""
        last = {CHECKPOINT_STEP: self.checkpoint_step, CHECKPOINT_TIME: self.checkpoint_time,
                CHECKPOINT_URI: self.checkpoint_uri, CHECKPOINT_REQUEST_ID: self.checkpoint_request_id}
        return {
            STEP: self.step,
            COMPLETED: self.completed,
            HANDLED_REQUEST_ID: self.handled_request_id,
            LAST_CHECKPOINT: last if any(v is not None for v in last.values()) else None,
            CHECKPOINT_REQUEST: None if self.pending_request_id is None else {REQUEST_ID: self.pending_request_id},
            SCRIPT_FAILURES: self.script_failures,
            ERROR: self.error,
            RENDEZVOUS_ID: self.rendezvous_id,
        }


def parse_status(raw: bytes) -> TrainerStatus | None:
    """A /status answer as the operator reads it; None for one that is not a JSON object (or nests too deep)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return TrainerStatus.from_json(body) if isinstance(body, Mapping) else None
