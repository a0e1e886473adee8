"""AWS queue mode: EC2 interruption events from EventBridge, read from an SQS queue, mark the affected Nodes.

Like Karpenter's and the AWS Node Termination Handler's queue mode, an EventBridge rule sends these events to
an SQS queue the operator long-polls:

- ``EC2 Spot Instance Interruption Warning``: ``detail.instance-id``, ``detail.instance-action``;
  deadline: the event's ``time`` + 120 s -> ``aws-spot-itn``;
- ``EC2 Instance Rebalance Recommendation``: ``detail.instance-id``; no deadline -> ``aws-rebalance``;
- ``EC2 Instance State-change Notification``: ``detail.instance-id``, ``detail.state``; shutting-down,
  stopping, stopped or terminated -> ``aws-state-change``, deadline: the event's ``time`` (it is going now);
- ``AWS Health Event`` for EC2 with ``eventTypeCategory`` ``scheduledChange``: ``detail.affectedEntities[]
  .entityValue``; deadline: ``detail.startTime`` -> ``aws-scheduled``.

An instance maps to the Node whose ``spec.providerID`` ends with ``/<instance-id>`` (``aws:///<az>/<id>``); the
Node is marked with the same contract as spotrain-agent (``agent.node_marker``), so the operator reads one
contract, plus ``spotrain.dev/queue-event`` in the same patch, so that a job's ``sources.awsQueue: false`` turns off
every notice the queue gave. Messages for instances outside this cluster are deleted and counted, malformed ones
are logged and deleted, and a message whose Node could not be patched stays in the queue to be delivered again.

Each message is handled on its own: one that cannot be parsed or handled never stops the rest of its batch, and
one that keeps failing is deleted once SQS has delivered it ``max_receives`` times (0: never; a redrive policy on
the queue then moves it to a dead-letter queue). SQS consumers compete for messages, so the queue must be
dedicated to spotrain: sharing Karpenter's or NTH's queue would take their messages.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client import Counter

from spotrain_operator import health
from spotrain_operator.agent import node_marker
from spotrain_operator.agent.interruption import (
    AWS_REBALANCE,
    AWS_SCHEDULED,
    AWS_SPOT_ITN,
    AWS_STATE_CHANGE,
    Interruption,
    parse_rfc1123,
    parse_rfc3339,
)
from spotrain_operator.agent.node_marker import MarkResult, NodeMarker
from spotrain_operator.wellknown import AGENT_INTERRUPTION_TAINT, QUEUE_EVENT_ANNOTATION

log = logging.getLogger("spotrain.awsqueue")

SPOT_INTERRUPTION = "EC2 Spot Instance Interruption Warning"
REBALANCE_RECOMMENDATION = "EC2 Instance Rebalance Recommendation"
STATE_CHANGE = "EC2 Instance State-change Notification"
HEALTH_EVENT = "AWS Health Event"
GOING_STATES = frozenset({"shutting-down", "stopping", "stopped", "terminated"})
SPOT_NOTICE = datetime.timedelta(seconds=120)
LIVENESS_NAME = "aws-queue"
# Between beats: a long poll (20 s) within botocore's read timeout (60 s), or the error backoff (60 s), or one
# message (a Node list and a few reads and patches, each with its own timeout).
LIVENESS_MAX_AGE = 300.0

MESSAGES = Counter("spotrain_awsqueue_messages", "SQS messages handled by the AWS queue consumer, by outcome "
                   "(marked, unchanged, unknown_instance, ignored, malformed, failed, error, poison).", ["outcome"])


class MalformedMessage(ValueError):
    pass


@dataclass(frozen=True)
class QueueEvent:
    """One EventBridge event: which instances it concerns and what to mark them with (None: nothing to do)."""

    event_id: str
    detail_type: str
    instance_ids: tuple[str, ...]
    interruption: Interruption | None
    note: str = ""


def _str(d: dict[str, Any], key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"{where}: missing or not a string: {key!r}")
    return value


def _instance_id(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("i-") or "/" in value or len(value) > 64:
        raise MalformedMessage(f"not an instance id: {value!r}")
    return value


def parse_message(body: object) -> QueueEvent:
    """Parses an SQS message body holding an EventBridge event (also inside an SNS envelope); raises
    ``MalformedMessage``, and nothing else, for anything that is not one (deep nesting, times out of range,
    wrong types)."""
    try:
        return _parse_event(body)
    except MalformedMessage:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError, AttributeError) as e:
        raise MalformedMessage(f"not an EventBridge event: {type(e).__name__}: {str(e)[:120]}") from e


def _json(text: object, what: str) -> Any:
    if not isinstance(text, str | bytes):
        raise MalformedMessage(f"{what}: not text but {type(text).__name__}")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise MalformedMessage(f"{what}: not JSON: {text[:80]!r}") from e


def _parse_event(body: object) -> QueueEvent:
    doc = _json(body, "message body")
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        doc = _json(doc["Message"], "SNS envelope")  # EventBridge -> SNS -> SQS
    if not isinstance(doc, dict):
        raise MalformedMessage(f"not an object: {str(body)[:80]!r}")
    detail_type = _str(doc, "detail-type", "event")
    event_id = _str(doc, "id", "event")
    detail = doc.get("detail")
    if not isinstance(detail, dict):
        raise MalformedMessage("event: no detail object")

    def event_time() -> datetime.datetime:
        try:
            return parse_rfc3339(doc.get("time"))
        except ValueError as e:
            raise MalformedMessage(f"event: bad time: {e}") from e

    if detail_type == SPOT_INTERRUPTION:
        instance = _instance_id(detail.get("instance-id"))
        action = detail.get("instance-action")
        return QueueEvent(event_id, detail_type, (instance,),
                          Interruption(AWS_SPOT_ITN, event_time() + SPOT_NOTICE, event_id, f"action={action}"))
    if detail_type == REBALANCE_RECOMMENDATION:
        instance = _instance_id(detail.get("instance-id"))
        event_time()  # validated, though a recommendation has no deadline
        return QueueEvent(event_id, detail_type, (instance,),
                          Interruption(AWS_REBALANCE, None, event_id, "rebalance recommendation"))
    if detail_type == STATE_CHANGE:
        instance = _instance_id(detail.get("instance-id"))
        state = _str(detail, "state", "detail")
        if state not in GOING_STATES:
            return QueueEvent(event_id, detail_type, (instance,), None, f"state={state}")
        return QueueEvent(event_id, detail_type, (instance,),
                          Interruption(AWS_STATE_CHANGE, event_time(), event_id, f"state={state}"))
    if detail_type == HEALTH_EVENT:
        return _health_event(event_id, detail)
    return QueueEvent(event_id, detail_type, (), None, "not an interruption event")


def _health_event(event_id: str, detail: dict[str, Any]) -> QueueEvent:
    if detail.get("service") != "EC2" or detail.get("eventTypeCategory") != "scheduledChange":
        return QueueEvent(event_id, HEALTH_EVENT, (), None, "not an EC2 scheduled change")
    entities = detail.get("affectedEntities")
    if not isinstance(entities, list) or not entities:
        raise MalformedMessage("AWS Health event: no affectedEntities")
    instances = []
    for entity in entities:
        if not isinstance(entity, dict):
            raise MalformedMessage(f"AWS Health event: bad entity {entity!r}")
        value = entity.get("entityValue")
        if isinstance(value, str) and value.startswith("i-"):
            instances.append(_instance_id(value))
    raw_start = detail.get("startTime")
    try:
        start = parse_rfc1123(raw_start)
    except ValueError:
        try:
            start = parse_rfc3339(raw_start)
        except ValueError as e:
            raise MalformedMessage(f"AWS Health event: bad startTime {raw_start!r}") from e
    code = detail.get("eventTypeCode")
    return QueueEvent(event_id, HEALTH_EVENT, tuple(instances),
                      Interruption(AWS_SCHEDULED, start, event_id, f"health={code}"))


def instance_id_from_provider_id(provider_id: str | None) -> str | None:
    """``aws:///us-east-1a/i-0123...`` -> ``i-0123...``; None for other clouds or no id."""
    if not provider_id or not provider_id.startswith("aws://"):
        return None
    last = provider_id.rstrip("/").rsplit("/", 1)[-1]
    return last if last.startswith("i-") else None


class QueueNodeMarker(NodeMarker):
    """A ``NodeMarker`` whose marks say they came from the queue: a patch that sets the interruption taint also
    sets ``spotrain.dev/queue-event`` to the event id, in the same patch, so no reader ever sees the queue's
    mark without its origin. A patch that only refines a mark another source set (an earlier deadline, a
    missing event id) leaves the origin alone.

    The one known overlap: when the agent and the queue both see the same interruption, whichever set the
    taint first owns the mark (the other only refines it), so with ``sources.awsQueue: false`` a mark the queue
    set first hides the agent's sighting of the same event."""

    def mark(self, node_name: str, interruption: Interruption) -> MarkResult:
        for attempt in range(self.conflict_retries):
            node = self.read(node_name)
            patch = node_marker.plan_patch(node, interruption)
            if patch is None:
                return MarkResult(node_name, False, None, node_marker.is_drained(node))
            if any(t.get("key") == AGENT_INTERRUPTION_TAINT for t in patch.get("spec", {}).get("taints", [])):
                patch["metadata"].setdefault("annotations", {})[QUEUE_EVENT_ANNOTATION] = interruption.event_id
            try:
                self.core.patch_node(node_name, patch, field_manager=self.field_manager,
                                     _content_type=node_marker.MERGE_PATCH, _request_timeout=self.request_timeout)
            except ApiException as e:
                if e.status == 409 and attempt + 1 < self.conflict_retries:
                    continue
                raise
            return MarkResult(node_name, True, patch, node_marker.is_drained(node))
        raise AssertionError("unreachable")  # the last attempt returns or raises


@dataclass
class PollResult:
    """What one ``poll_once`` did."""

    received: int = 0
    marked: list[tuple[str, str]] = field(default_factory=list)  # (node, kind): the Node changed
    unchanged: list[tuple[str, str]] = field(default_factory=list)  # (node, kind): it already said as much
    unknown: list[str] = field(default_factory=list)  # instance ids with no Node in this cluster
    ignored: int = 0  # events that ask for nothing (state running, other detail types)
    malformed: int = 0
    failed: list[str] = field(default_factory=list)  # message ids left in the queue (a Node patch failed)
    errors: int = 0  # messages whose handling raised something unexpected (left in the queue, or poison)
    poison: list[str] = field(default_factory=list)  # message ids deleted after max_receives failed deliveries
    deleted: int = 0


class AwsQueueConsumer:
    """Consumes the interruption queue. ``poll_once()`` receives one batch (long poll) and handles it;
    ``run(stop_event)`` loops until the event is set, never raising."""

    def __init__(
        self,
        core: client.CoreV1Api,
        queue_url: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        wait_time_seconds: int = 20,
        max_messages: int = 10,
        retry_visibility_timeout: int | None = 10,
        max_receives: int = 5,
        node_cache_seconds: float = 60.0,
        sqs_client: Any = None,
        marker: NodeMarker | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.core = core
        self.queue_url = queue_url
        self.wait_time_seconds = wait_time_seconds
        self.max_messages = max_messages
        self.retry_visibility_timeout = retry_visibility_timeout
        self.max_receives = max_receives
        self.node_cache_seconds = node_cache_seconds
        self.sqs = sqs_client or boto3.client("sqs", region_name=region, endpoint_url=endpoint_url)
        self.marker = marker or QueueNodeMarker(core, field_manager="spotrain-operator")
        self._monotonic = monotonic
        self._nodes: dict[str, str] = {}  # instance id -> Node name
        self._nodes_at: float | None = None
        self.totals: Tally[str] = Tally()
        self.thread: threading.Thread | None = None  # set by start_queue_consumer

    # -- instance id -> Node --------------------------------------------------------------------------------

    def _refresh_nodes(self) -> None:
        nodes = self.core.list_node(_request_timeout=30).items
        mapping = {}
        for node in nodes:
            instance = instance_id_from_provider_id(node.spec.provider_id if node.spec else None)
            if instance and node.metadata and node.metadata.name:
                mapping[instance] = node.metadata.name
        self._nodes = mapping
        self._nodes_at = self._monotonic()

    def node_for(self, instance_id: str, refreshed: list[bool]) -> str | None:
        """The Node of an instance; lists Nodes again when the cache is old or misses (once per poll)."""
        stale = self._nodes_at is None or self._monotonic() - self._nodes_at > self.node_cache_seconds
        if stale or (instance_id not in self._nodes and not refreshed[0]):
            self._refresh_nodes()
            refreshed[0] = True
        return self._nodes.get(instance_id)

    # -- messages -------------------------------------------------------------------------------------------

    def poll_once(self) -> PollResult:
        resp = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.max_messages,
            WaitTimeSeconds=self.wait_time_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        result = PollResult()
        refreshed = [False]
        messages = resp.get("Messages")
        for message in messages if isinstance(messages, list) else []:
            health.heartbeat(LIVENESS_NAME, LIVENESS_MAX_AGE)
            result.received += 1
            message_id = str(message.get("MessageId", ""))
            try:
                done = self._handle(message, result, refreshed)
            except Exception:
                result.errors += 1
                self._count("error")
                log.exception("unexpected error handling queue message %s", message_id)
                done = False
            if not done and self._is_poison(message):
                result.poison.append(message_id)
                self._count("poison")
                log.error("deleting queue message %s after %d deliveries that all failed", message_id,
                          self.max_receives)
                done = True
            elif not done:
                result.failed.append(message_id)
                self._retry_soon(message)
            if done and self._delete(message):
                result.deleted += 1
        return result

    def _is_poison(self, message: Mapping[str, Any]) -> bool:
        """Delivered ``max_receives`` times already (SQS counts the deliveries; 0 never gives up)."""
        attributes = message.get("Attributes")
        received = str(attributes.get("ApproximateReceiveCount")) if isinstance(attributes, Mapping) else ""
        return self.max_receives > 0 and received.isdigit() and int(received) >= self.max_receives

    def _delete(self, message: Mapping[str, Any]) -> bool:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            return True
        except Exception as e:  # it comes back after its visibility timeout and is handled again, idempotently
            log.warning("cannot delete queue message %s: %s", message.get("MessageId", ""), _short(e))
            return False

    def _count(self, outcome: str, n: int = 1) -> None:
        self.totals[outcome] += n
        MESSAGES.labels(outcome).inc(n)

    def _handle(self, message: Mapping[str, Any], result: PollResult, refreshed: list[bool]) -> bool:
        """Handles one message; returns whether to delete it."""
        message_id = message.get("MessageId", "")
        try:
            event = parse_message(message.get("Body"))
        except MalformedMessage as e:
            result.malformed += 1
            self._count("malformed")
            log.warning("deleting malformed queue message %s: %s", message_id, e)
            return True
        if event.interruption is None or not event.instance_ids:
            result.ignored += 1
            self._count("ignored")
            log.debug("ignoring %s (%s)", event.detail_type, event.note)
            return True
        ok = True
        for instance in event.instance_ids:
            try:
                node = self.node_for(instance, refreshed)
            except Exception as e:
                log.warning("cannot list nodes, message %s stays queued: %s", message_id, _short(e))
                self._count("failed")
                return False
            if node is None:
                result.unknown.append(instance)
                self._count("unknown_instance")
                log.info("no node for instance %s (%s, event %s): not in this cluster", instance,
                         event.detail_type, event.event_id)
                continue
            try:
                try:
                    marked = self.marker.mark(node, event.interruption)
                except ApiException as e:
                    if e.status != 404:
                        raise
                    # The cached Node is gone (deleted, or replaced under another name): look again.
                    self._nodes_at = None
                    node = self.node_for(instance, [True])
                    if node is None:
                        result.unknown.append(instance)
                        self._count("unknown_instance")
                        log.info("node for instance %s is gone (event %s)", instance, event.event_id)
                        continue
                    marked = self.marker.mark(node, event.interruption)
            except Exception as e:
                ok = False
                self._count("failed")
                log.warning("cannot mark node %s for %s (event %s), the message stays queued: %s", node,
                            event.detail_type, event.event_id, _short(e), extra={"node": node})
                continue
            kind = event.interruption.kind
            if marked.changed:
                result.marked.append((node, kind))
                self._count("marked")
                log.info("marked node %s (%s) %s, event %s, %s", node, instance, kind, event.event_id,
                         event.interruption.detail, extra={"node": node})
            else:
                result.unchanged.append((node, kind))
                self._count("unchanged")
        return ok

    def _retry_soon(self, message: Mapping[str, Any]) -> None:
        if self.retry_visibility_timeout is None:
            return
        try:
            self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"],
                                               VisibilityTimeout=self.retry_visibility_timeout)
        except Exception as e:  # the default visibility timeout then applies
            log.debug("change_message_visibility failed: %s", e)

    def run(self, stop_event: threading.Event, error_backoff: float = 5.0) -> None:
        """Polls until ``stop_event`` is set; a stop takes effect after the current long poll returns. Each round,
        answered or failed, is a liveness heartbeat: a consumer stuck in a call makes /healthz fail."""
        failures = 0
        while not stop_event.is_set():
            health.heartbeat(LIVENESS_NAME, LIVENESS_MAX_AGE)
            try:
                self.poll_once()
                failures = 0
            except Exception as e:
                failures += 1
                if failures == 1 or failures % 12 == 0:
                    log.warning("cannot read the interruption queue %s (%d failures in a row), retrying: %s",
                                self.queue_url, failures, _short(e))
                stop_event.wait(min(error_backoff * failures, 60.0))
        health.LIVENESS.forget(LIVENESS_NAME)


def _short(e: BaseException) -> str:
    status = getattr(e, "status", None)
    if status is not None:
        return f"{type(e).__name__}: {status} {getattr(e, 'reason', '')}"[:300]
    return f"{type(e).__name__}: {e}"[:300]


def start_queue_consumer(
    api_client: client.ApiClient,
    queue_url: str,
    region: str | None,
    endpoint_url: str | None,
    stop_event: threading.Event,
    wait_time_seconds: int = 20,
    max_receives: int = 5,
) -> AwsQueueConsumer:
    """Starts the consumer in a daemon thread (``consumer.thread``) that runs until ``stop_event`` is set."""
    consumer = AwsQueueConsumer(client.CoreV1Api(api_client), queue_url, region=region, endpoint_url=endpoint_url,
                                wait_time_seconds=wait_time_seconds, max_receives=max_receives)
    consumer.thread = threading.Thread(target=consumer.run, args=(stop_event,), name="aws-queue", daemon=True)
    consumer.thread.start()
    log.info("consuming EC2 interruption events from %s", queue_url)
    return consumer
