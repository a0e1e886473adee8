"""`spec.termination.sources.awsQueue: false` turns off every notice that came from the AWS interruption queue,
whatever its kind, against the operator process: the queue's mark is written exactly as the queue consumer
writes it (QueueNodeMarker), and a later spotrain-agent notice on another node is the sign that the operator
has looked at both."""

from __future__ import annotations

import datetime

from spotrain_dev.testing import Harness, wait_for
from spotrain_operator.agent.interruption import AWS_SPOT_ITN, Interruption
from spotrain_operator.awsqueue import QueueNodeMarker


def test_notices_from_the_queue_are_ignored_when_the_source_is_off(harness: Harness) -> None:
    nodes = [harness.add_node("spot-cpu", zone) for zone in ("us-east-1a", "us-east-1b")]
    harness.wait_nodes_ready(nodes)
    manifest = harness.job_manifest(min_nodes=1, max_nodes=2, termination={"sources": {"awsQueue": False}})
    del manifest["spec"]["fallback"]
    harness.start_operator()
    harness.create_job(manifest)
    wait_for("2 workers", lambda: harness.status().get("readyWorkers") == 2)

    deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=2)
    marked = QueueNodeMarker(harness.core).mark(
        nodes[0], Interruption(AWS_SPOT_ITN, deadline, "1e5527d7-bb36-4607-3370-4164db56a40e"))
    assert marked.changed
    harness.nodes.signal(nodes[1], "spotrain-agent", lead_seconds=120)

    def notices() -> list[str]:
        return [e.message for e in harness.events("InterruptionNotice")]

    wait_for("the agent's notice", lambda: any(nodes[1] in m for m in notices()))
    assert not any(nodes[0] in m for m in notices()), notices()
