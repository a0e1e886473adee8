"""AWS queue mode against moto's SQS server on 127.0.0.1: EventBridge-shaped messages for a devcluster Node's
instance mark that Node; unknown instances and malformed messages are deleted and counted; a failed Node patch
leaves the message queued for redelivery, and one that keeps failing is deleted after a bounded number of
deliveries; a malformed message never holds up the rest of its batch."""

from __future__ import annotations

import datetime
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client

from spotrain_dev import processes
from spotrain_dev.cluster import DevCluster
from spotrain_dev.nodes import NodeSimulator
from spotrain_dev.testing import wait_for
from spotrain_dev.timestamps import rfc3339
from spotrain_operator.agent.node_marker import NodeMarker
from spotrain_operator.awsqueue import AwsQueueConsumer, PollResult, start_queue_consumer
from spotrain_operator.core.model import NodeView
from spotrain_operator.core.termination import node_notice
from spotrain_operator.wellknown import (
    AGENT_DEADLINE_ANNOTATION,
    AGENT_EVENT_ANNOTATION,
    AGENT_INTERRUPTION_TAINT,
    QUEUE_EVENT_ANNOTATION,
)

pytestmark = pytest.mark.cluster

REGION = "us-east-1"
UTC = datetime.UTC


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = processes.free_port()
    workdir = tmp_path_factory.mktemp("moto")
    env = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(workdir / "pycache")}
    proc = processes.start("moto_server", [Path(sys.executable).with_name("moto_server"), "-H", "127.0.0.1",
                                           "-p", str(port)], workdir, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_until("moto_server", lambda: sqs_client(url).list_queues() is not None, [proc], timeout=90)
        yield url
    finally:
        proc.stop()


def sqs_client(url: str) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture(autouse=True)
def dummy_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # The consumer builds its own client from region and endpoint_url, with the usual credential chain.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never look for 169.254.169.254


@pytest.fixture
def queue(moto_url: str) -> Iterator[str]:
    sqs = sqs_client(moto_url)
    url: str = sqs.create_queue(QueueName=f"interruptions-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


@pytest.fixture
def node(devcluster: DevCluster) -> Iterator[str]:
    sim = NodeSimulator.from_kubeconfig(devcluster.kubeconfig)
    name = sim.add("spot-cpu", "us-east-1a")
    try:
        yield name
    finally:
        sim.remove(name)


def instance_of(core: client.CoreV1Api, node: str) -> str:
    provider_id = core.read_node(node).spec.provider_id
    assert provider_id.startswith("aws:///us-east-1") and "/i-" in provider_id, provider_id
    return str(provider_id.rsplit("/", 1)[1])


def event(detail_type: str, detail: dict[str, Any], when: str = "2026-01-01T08:20:00Z") -> tuple[str, str]:
    event_id = str(uuid.uuid4())
    body = {"version": "0", "id": event_id, "detail-type": detail_type, "source": "aws.ec2",
            "account": "123456789012", "time": when, "region": REGION, "resources": [], "detail": detail}
    return event_id, json.dumps(body)


def send(moto_url: str, queue: str, *bodies: str) -> None:
    sqs = sqs_client(moto_url)
    for body in bodies:
        sqs.send_message(QueueUrl=queue, MessageBody=body)


def consumer(core: client.CoreV1Api, moto_url: str, queue: str, **kw: Any) -> AwsQueueConsumer:
    return AwsQueueConsumer(core, queue, region=REGION, endpoint_url=moto_url, wait_time_seconds=1, **kw)


def poll_until(c: AwsQueueConsumer, count: int, timeout: float = 60.0) -> PollResult:
    """Polls until ``count`` messages were received; returns the results merged."""
    total = PollResult()
    deadline = time.monotonic() + timeout
    while total.received < count:
        assert time.monotonic() < deadline, f"received {total.received} of {count} messages"
        r = c.poll_once()
        total.received += r.received
        total.marked += r.marked
        total.unchanged += r.unchanged
        total.unknown += r.unknown
        total.ignored += r.ignored
        total.malformed += r.malformed
        total.failed += r.failed
        total.errors += r.errors
        total.poison += r.poison
        total.deleted += r.deleted
    return total


def queue_is_empty(moto_url: str, queue: str) -> bool:
    attrs = sqs_client(moto_url).get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return attrs == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}


def mark(core: client.CoreV1Api, node: str) -> tuple[str | None, str | None, str | None, str | None]:
    n = core.read_node(node)
    taint = next((t for t in n.spec.taints or [] if t.key == AGENT_INTERRUPTION_TAINT), None)
    annotations = n.metadata.annotations or {}
    return (taint.value if taint else None, taint.effect if taint else None,
            annotations.get(AGENT_DEADLINE_ANNOTATION), annotations.get(AGENT_EVENT_ANNOTATION))


def test_spot_interruption_marks_the_node(core: client.CoreV1Api, moto_url: str, queue: str, node: str) -> None:
    instance = instance_of(core, node)
    event_id, body = event("EC2 Spot Instance Interruption Warning",
                           {"instance-id": instance, "instance-action": "terminate"})
    send(moto_url, queue, body)
    c = consumer(core, moto_url, queue)
    result = poll_until(c, 1)
    assert result.marked == [(node, "aws-spot-itn")]
    assert result.deleted == 1 and result.failed == []
    assert mark(core, node) == ("aws-spot-itn", "NoSchedule", "2026-01-01T08:22:00Z", event_id)
    assert queue_is_empty(moto_url, queue)

    # The same event delivered twice (SQS is at-least-once) sends no patch (KWOK's heartbeats move the Node's
    # resourceVersion anyway, so the consumer's own account is what tells).
    send(moto_url, queue, body)
    result = poll_until(c, 1)
    assert result.unchanged == [(node, "aws-spot-itn")] and result.marked == [] and result.deleted == 1
    assert mark(core, node) == ("aws-spot-itn", "NoSchedule", "2026-01-01T08:22:00Z", event_id)


def test_rebalance_then_state_change(core: client.CoreV1Api, moto_url: str, queue: str, node: str) -> None:
    instance = instance_of(core, node)
    c = consumer(core, moto_url, queue)
    rebalance_id, body = event("EC2 Instance Rebalance Recommendation", {"instance-id": instance})
    send(moto_url, queue, body)
    assert poll_until(c, 1).marked == [(node, "aws-rebalance")]
    assert mark(core, node) == ("aws-rebalance", "NoSchedule", None, rebalance_id)

    _, running = event("EC2 Instance State-change Notification", {"instance-id": instance, "state": "running"})
    send(moto_url, queue, running)
    result = poll_until(c, 1)
    assert result.ignored == 1 and result.deleted == 1 and result.marked == []

    gone_id, body = event("EC2 Instance State-change Notification",
                          {"instance-id": instance, "state": "shutting-down"}, when="2026-01-01T08:21:00Z")
    send(moto_url, queue, body)
    assert poll_until(c, 1).marked == [(node, "aws-state-change")]
    assert mark(core, node) == ("aws-state-change", "NoSchedule", "2026-01-01T08:21:00Z", gone_id)
    assert queue_is_empty(moto_url, queue)


def test_unknown_and_malformed_messages_are_deleted(core: client.CoreV1Api, moto_url: str, queue: str,
                                                    node: str) -> None:
    _, unknown = event("EC2 Spot Instance Interruption Warning",
                       {"instance-id": "i-0fffffffffffffff0", "instance-action": "terminate"})
    _, no_instance = event("EC2 Spot Instance Interruption Warning", {"instance-action": "terminate"})
    _, other = event("EC2 AMI State Change", {"ImageId": "ami-0123", "State": "available"})
    send(moto_url, queue, unknown, "this is not an event", no_instance, other)
    c = consumer(core, moto_url, queue)
    result = poll_until(c, 4)
    assert result.unknown == ["i-0fffffffffffffff0"]
    assert result.malformed == 2
    assert result.ignored == 1
    assert result.deleted == 4 and result.failed == [] and result.marked == []
    assert c.totals == {"unknown_instance": 1, "malformed": 2, "ignored": 1}
    assert queue_is_empty(moto_url, queue)
    assert mark(core, node) == (None, None, None, None)


def test_a_failed_patch_leaves_the_message_queued(core: client.CoreV1Api, moto_url: str, queue: str,
                                                  node: str) -> None:
    instance = instance_of(core, node)
    event_id, body = event("EC2 Spot Instance Interruption Warning",
                           {"instance-id": instance, "instance-action": "stop"})
    send(moto_url, queue, body)
    # Nodes are listed through the real apiserver; the patch goes to one that refuses connections.
    dead = client.CoreV1Api(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{processes.free_port()}")))
    broken = consumer(core, moto_url, queue, marker=NodeMarker(dead, request_timeout=2),
                      retry_visibility_timeout=1)
    result = poll_until(broken, 1)
    assert len(result.failed) == 1 and result.deleted == 0 and result.marked == []
    assert broken.totals == {"failed": 1}
    assert mark(core, node) == (None, None, None, None)
    assert not queue_is_empty(moto_url, queue)

    result = poll_until(consumer(core, moto_url, queue), 1)  # redelivered once the visibility timeout ends
    assert result.marked == [(node, "aws-spot-itn")] and result.deleted == 1
    assert mark(core, node) == ("aws-spot-itn", "NoSchedule", "2026-01-01T08:22:00Z", event_id)
    assert queue_is_empty(moto_url, queue)


def test_the_operator_entry_point_runs_in_a_thread(api_client: client.ApiClient, core: client.CoreV1Api,
                                                   moto_url: str, queue: str, node: str) -> None:
    stop = threading.Event()
    c = start_queue_consumer(api_client, queue, REGION, moto_url, stop, wait_time_seconds=1)
    try:
        _, body = event("EC2 Spot Instance Interruption Warning",
                        {"instance-id": instance_of(core, node), "instance-action": "terminate"})
        send(moto_url, queue, body)

        def marked() -> bool:
            assert c.thread is not None and c.thread.is_alive()
            return mark(core, node)[0] == "aws-spot-itn"

        wait_for("the consumer thread to mark the node", marked, timeout=60, interval=0.2)
    finally:
        stop.set()
    assert c.thread is not None
    c.thread.join(timeout=30)
    assert not c.thread.is_alive()


def test_a_node_deleted_since_it_was_cached_counts_as_unknown(devcluster: DevCluster, core: client.CoreV1Api,
                                                              moto_url: str, queue: str) -> None:
    sim = NodeSimulator.from_kubeconfig(devcluster.kubeconfig)
    gone = sim.add("spot-cpu", "us-east-1b")
    try:
        instance = instance_of(core, gone)
        c = consumer(core, moto_url, queue)
        _, rebalance = event("EC2 Instance Rebalance Recommendation", {"instance-id": instance})
        send(moto_url, queue, rebalance)
        assert poll_until(c, 1).marked == [(gone, "aws-rebalance")]  # the Node is in the consumer's cache now
    finally:
        sim.remove(gone)
    _, body = event("EC2 Spot Instance Interruption Warning", {"instance-id": instance, "instance-action": "stop"})
    send(moto_url, queue, body)
    result = poll_until(c, 1)
    assert result.unknown == [instance] and result.deleted == 1 and result.failed == []
    assert queue_is_empty(moto_url, queue)



def test_every_mark_of_the_queue_is_source_aws_queue(core: client.CoreV1Api, moto_url: str, queue: str,
                                                      node: str) -> None:
    event_id, body = event("EC2 Spot Instance Interruption Warning",
                           {"instance-id": instance_of(core, node), "instance-action": "terminate"},
                           when=rfc3339(datetime.datetime.now(UTC)))
    send(moto_url, queue, body)
    assert poll_until(consumer(core, moto_url, queue), 1).marked == [(node, "aws-spot-itn")]
    stored = core.api_client.sanitize_for_serialization(core.read_node(node))
    assert stored["metadata"]["annotations"][QUEUE_EVENT_ANNOTATION] == event_id
    view, now = NodeView.from_body(stored), datetime.datetime.now(UTC)
    notice = node_notice(view, now, {"awsQueue", "agent"}, False)
    assert notice is not None and notice.source == "awsQueue"
    assert node_notice(view, now, {"agent"}, False) is None  # spec.termination.sources.awsQueue: false


def test_a_malformed_message_does_not_hold_up_its_batch(core: client.CoreV1Api, moto_url: str, queue: str,
                                                        node: str) -> None:
    _, far = event("EC2 Spot Instance Interruption Warning",
                   {"instance-id": instance_of(core, node), "instance-action": "stop"}, when="9999-12-31T23:59:59Z")
    _, good = event("EC2 Spot Instance Interruption Warning",
                    {"instance-id": instance_of(core, node), "instance-action": "terminate"})
    send(moto_url, queue, far, "[" * 100_000, good)
    result = poll_until(consumer(core, moto_url, queue), 3)
    assert result.malformed == 2 and result.marked == [(node, "aws-spot-itn")] and result.deleted == 3
    assert queue_is_empty(moto_url, queue)


def test_a_message_that_keeps_failing_is_deleted_after_max_receives(core: client.CoreV1Api, moto_url: str,
                                                                      queue: str, node: str) -> None:
    _, body = event("EC2 Spot Instance Interruption Warning",
                    {"instance-id": instance_of(core, node), "instance-action": "stop"})
    send(moto_url, queue, body)
    dead = client.CoreV1Api(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{processes.free_port()}")))
    broken = consumer(core, moto_url, queue, marker=NodeMarker(dead, request_timeout=2),
                      retry_visibility_timeout=0, max_receives=3)
    result = poll_until(broken, 3)
    assert len(result.failed) == 2 and len(result.poison) == 1 and result.deleted == 1
    assert queue_is_empty(moto_url, queue)
    assert mark(core, node) == (None, None, None, None)
