"""The devcluster's simulated signals, read back from the API server, mean to the detectors what the real
emitters' writes mean: NTH's taints (event ids, no times) and labels, and kubelet graceful node shutdown as
opposed to a node that vanished. No operator runs here: these tests pin the simulator and the detectors to each
other on real API objects."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from kubernetes import client

from spotrain_dev.testing import Harness, wait_for
from spotrain_operator import wellknown as wk
from spotrain_operator.core.model import NodeView, PodView
from spotrain_operator.core.termination import NTH_DRAIN_TIMEOUT, node_notice, pod_notice

pytestmark = pytest.mark.cluster

ALL_SOURCES = frozenset(["nodeTerminationHandler", "karpenter", "gke", "aks", "clusterAutoscaler", "agent",
                         "awsQueue", "nodeHealth", "podDisruption"])
NTH_TAINTS = {"nth-spot-itn": wk.NTH_SPOT_ITN, "nth-asg-lifecycle": wk.NTH_ASG_LIFECYCLE,
              "nth-rebalance": wk.NTH_REBALANCE, "nth-scheduled-maintenance": wk.NTH_SCHEDULED_MAINTENANCE}


def body(harness: Harness, obj: Any) -> dict[str, Any]:
    return harness.api.sanitize_for_serialization(obj)


def node_view(harness: Harness, name: str) -> NodeView:
    return NodeView.from_body(body(harness, harness.core.read_node(name)))


@pytest.mark.parametrize("signal", sorted(NTH_TAINTS))
def test_simulated_nth_writes_event_ids_and_no_deadline(harness: Harness, signal: str) -> None:
    node = harness.add_node("spot-cpu", "us-east-1a")
    harness.wait_nodes_ready([node])
    harness.nodes.signal(node, signal, lead_seconds=600)
    view = node_view(harness, node)
    taint = view.taint(NTH_TAINTS[signal])
    assert taint is not None and taint.effect == "NoSchedule" and view.unschedulable
    assert 0 < len(taint.value) <= 63 and not taint.value.isdigit()  # an event id, never a time
    now = datetime.datetime.now(datetime.UTC)
    notice = node_notice(view, now, ALL_SOURCES, proactive_on_rebalance=True)
    assert notice is not None and notice.source == "nodeTerminationHandler"
    assert notice.early_warning == (signal == "nth-rebalance")
    if signal == "nth-scheduled-maintenance":
        # The one time NTH writes: when it acted (the action label's time), not when maintenance starts.
        assert view.labels[wk.NTH_EVENT_ID_LABEL][:63] == taint.value
        assert view.labels[wk.NTH_ACTION_LABEL] == wk.NTH_UNCORDON_AFTER_REBOOT
        acted = datetime.datetime.fromtimestamp(int(view.labels[wk.NTH_ACTION_TIME_LABEL]), datetime.UTC)
        assert acted <= now and notice.deadline == acted + NTH_DRAIN_TIMEOUT
    else:
        assert wk.NTH_ACTION_TIME_LABEL not in view.labels
        assert notice.deadline == now + NTH_DRAIN_TIMEOUT  # the simulator's lead is not NTH's to write


def _pod_on(harness: Harness, node: str) -> str:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="victim", namespace=harness.namespace),
        spec=client.V1PodSpec(node_name=node, containers=[client.V1Container(name="c", image="pause")],
                              tolerations=[client.V1Toleration(operator="Exists")]))
    harness.core.create_namespaced_pod(harness.namespace, pod)
    wait_for("pod running", lambda: harness.core.read_namespaced_pod("victim", harness.namespace).status.phase
             == "Running")
    return "victim"


@pytest.mark.parametrize(("signal", "phase"), [("gke-shutdown-begins", "Running"), ("gke-shutdown", "Failed")])
def test_graceful_node_shutdown_is_told_from_a_vanished_node(harness: Harness, signal: str, phase: str) -> None:
    node = harness.add_node("spot-cpu", "us-east-1a")
    harness.wait_nodes_ready([node])
    pod = _pod_on(harness, node)
    harness.nodes.signal(node, signal)
    now = datetime.datetime.now(datetime.UTC)
    view = node_view(harness, node)
    assert (view.ready_status, view.ready_reason) == ("False", "KubeletNotReady")
    notice = node_notice(view, now, ALL_SOURCES, False)
    assert notice is not None and notice.graceful and notice.source == "gke"
    assert node_notice(view, now, ALL_SOURCES - {"gke"}, False).graceful  # type: ignore[union-attr]
    stored = PodView.from_body(body(harness, harness.core.read_namespaced_pod(pod, harness.namespace)))
    assert stored.phase == phase and stored.disruption_reason == "TerminationByKubelet"
    pod_signal = pod_notice(stored, now, ALL_SOURCES)
    assert pod_signal is not None and pod_signal.graceful


def test_a_node_that_stops_heartbeating_is_not_graceful(harness: Harness) -> None:
    node = harness.add_node("spot-cpu", "us-east-1a")
    harness.wait_nodes_ready([node])
    harness.nodes.signal(node, "not-ready")
    notice = node_notice(node_view(harness, node), datetime.datetime.now(datetime.UTC), ALL_SOURCES, False)
    assert notice is not None and notice.source == "nodeHealth" and not notice.graceful
