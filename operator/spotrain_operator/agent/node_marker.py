"""The Node contract between spotrain-agent (and the operator's AWS queue mode) and the operator's detectors.

When an interruption is learned for a Node, that Node gets:

- taint ``spotrain.dev/interruption`` (effect NoSchedule), value: the kind (``aws-spot-itn``,
  ``aws-rebalance``, ``aws-scheduled``, ``aws-state-change``, ``gcp-preempted``, ``azure-preempt``);
- annotation ``spotrain.dev/interruption-deadline``: RFC 3339 UTC time the node goes, absent where the signal
  carries none (a rebalance recommendation);
- annotation ``spotrain.dev/interruption-event``: the cloud's event id, absent where there is none.

A stronger kind replaces a weaker one (taint value, deadline and event id together); a weaker or equal one
changes nothing, except that an earlier deadline for the same strength moves the deadline forward and a
missing event id is filled in. Repeating the same signal patches nothing.

``plan_patch`` is the pure decision; ``NodeMarker`` reads the Node, plans and patches (JSON merge patch with
the read resourceVersion, retried on conflict), so it needs only ``get`` and ``patch`` on nodes.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrain_operator.agent.interruption import STRENGTH, Interruption, format_rfc3339, parse_rfc3339
from spotrain_operator.wellknown import (
    AGENT_DEADLINE_ANNOTATION,
    AGENT_EVENT_ANNOTATION,
    AGENT_INTERRUPTION_TAINT,
    NODE_DRAINED_ANNOTATION,
)

log = logging.getLogger(__name__)

TAINT_EFFECT = "NoSchedule"
MERGE_PATCH = "application/merge-patch+json"
# Deadlines are written in whole seconds; a "new" deadline must be earlier than this to be news.
DEADLINE_TOLERANCE = datetime.timedelta(seconds=1)

NodeLike: TypeAlias = client.V1Node | Mapping[str, Any]


@dataclass(frozen=True)
class Mark:
    """The interruption mark a Node carries now."""

    kind: str  # the taint's value ("" when it has none)
    deadline: datetime.datetime | None
    event_id: str | None


@dataclass(frozen=True)
class _NodeParts:
    taints: list[dict[str, Any]]
    annotations: dict[str, str]
    resource_version: str | None


def _taint_dict(t: Any) -> dict[str, Any]:
    if isinstance(t, Mapping):
        return dict(t)
    d: dict[str, Any] = {"key": t.key, "effect": t.effect}
    if t.value is not None:
        d["value"] = t.value
    if t.time_added is not None:
        d["timeAdded"] = format_rfc3339(t.time_added) if isinstance(t.time_added, datetime.datetime) \
            else str(t.time_added)
    return d


def _parts(node: NodeLike) -> _NodeParts:
    if isinstance(node, Mapping):
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        return _NodeParts([dict(t) for t in spec.get("taints") or []], dict(meta.get("annotations") or {}),
                          meta.get("resourceVersion"))
    meta = node.metadata
    spec = node.spec
    return _NodeParts(
        [_taint_dict(t) for t in (spec.taints if spec is not None else None) or []],
        dict((meta.annotations if meta is not None else None) or {}),
        meta.resource_version if meta is not None else None,
    )


def read_mark(node: NodeLike) -> Mark | None:
    """The Node's interruption mark, or None when it has no interruption taint."""
    parts = _parts(node)
    taint = next((t for t in parts.taints if t.get("key") == AGENT_INTERRUPTION_TAINT), None)
    if taint is None:
        return None
    deadline = None
    raw = parts.annotations.get(AGENT_DEADLINE_ANNOTATION)
    if raw:
        try:
            deadline = parse_rfc3339(raw)
        except ValueError:
            deadline = None
    return Mark(str(taint.get("value") or ""), deadline, parts.annotations.get(AGENT_EVENT_ANNOTATION) or None)


def is_drained(node: NodeLike) -> bool:
    """Whether the operator has set ``spotrain.dev/drained`` (any value) on the Node."""
    return NODE_DRAINED_ANNOTATION in _parts(node).annotations


def plan_patch(node: NodeLike, interruption: Interruption) -> dict[str, Any] | None:
    """The JSON merge patch that applies ``interruption`` to ``node`` per the contract, or None when the
    node already says as much (or something stronger)."""
    parts = _parts(node)
    mark = read_mark(node)
    annotations: dict[str, str | None] = {}
    taints: list[dict[str, Any]] | None = None

    if mark is None or STRENGTH.get(mark.kind, 0) < interruption.strength:
        taints = [t for t in parts.taints if t.get("key") != AGENT_INTERRUPTION_TAINT]
        taints.append({"key": AGENT_INTERRUPTION_TAINT, "value": interruption.kind, "effect": TAINT_EFFECT})
        for key, value in (
            (AGENT_DEADLINE_ANNOTATION, format_rfc3339(interruption.deadline) if interruption.deadline else None),
            (AGENT_EVENT_ANNOTATION, interruption.event_id),
        ):
            if value is not None:
                annotations[key] = value
            elif key in parts.annotations:
                annotations[key] = None  # a stale value from an earlier, weaker signal
    elif STRENGTH.get(mark.kind, 0) > interruption.strength:
        return None
    else:
        if interruption.deadline is not None and (
            mark.deadline is None or interruption.deadline < mark.deadline - DEADLINE_TOLERANCE
        ):
            annotations[AGENT_DEADLINE_ANNOTATION] = format_rfc3339(interruption.deadline)
        if interruption.event_id and not mark.event_id:
            annotations[AGENT_EVENT_ANNOTATION] = interruption.event_id
        if not annotations:
            return None

    metadata: dict[str, Any] = {}
    if parts.resource_version:
        metadata["resourceVersion"] = parts.resource_version  # a conflicting writer makes the patch fail
    if annotations:
        metadata["annotations"] = annotations
    patch: dict[str, Any] = {"metadata": metadata}
    if taints is not None:
        patch["spec"] = {"taints": taints}
    return patch


@dataclass(frozen=True)
class MarkResult:
    node: str
    changed: bool
    patch: dict[str, Any] | None
    drained: bool  # the Node carried spotrain.dev/drained when it was read


class NodeMarker:
    """Applies interruptions to Nodes. ``mark`` raises ``ApiException`` (or a connection error) when the
    Node cannot be read or patched; callers retry."""

    def __init__(self, core: client.CoreV1Api, field_manager: str = "spotrain-agent",
                 request_timeout: float = 10.0, conflict_retries: int = 5):
        self.core = core
        self.field_manager = field_manager
        self.request_timeout = request_timeout
        self.conflict_retries = conflict_retries

    def read(self, node_name: str) -> client.V1Node:
        return self.core.read_node(node_name, _request_timeout=self.request_timeout)

    def mark(self, node_name: str, interruption: Interruption) -> MarkResult:
        for attempt in range(self.conflict_retries):
            node = self.read(node_name)
            patch = plan_patch(node, interruption)
            if patch is None:
                return MarkResult(node_name, False, None, is_drained(node))
            try:
                self.core.patch_node(node_name, patch, field_manager=self.field_manager,
                                     _content_type=MERGE_PATCH, _request_timeout=self.request_timeout)
            except ApiException as e:
                if e.status == 409 and attempt + 1 < self.conflict_retries:
                    log.debug("conflict patching node %s, reading it again", node_name)
                    continue
                raise
            return MarkResult(node_name, True, patch, is_drained(node))
        raise AssertionError("unreachable")  # the last attempt returns or raises
