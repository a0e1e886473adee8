"""Termination signals as their real emitters write them: the AWS Node Termination Handler's taints and labels,
kubelet graceful node shutdown, the operator's AWS queue marks, and garbage in any of them."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from spotrain_operator import wellknown as wk
from spotrain_operator.core.model import NodeView, PodView, Taint
from spotrain_operator.core.termination import NTH_DRAIN_TIMEOUT, node_notice, pod_notice

NOW = datetime.datetime(2026, 1, 1, 8, 0, 0, tzinfo=datetime.UTC)
ALL_SOURCES = frozenset(["nodeTerminationHandler", "karpenter", "gke", "aks", "clusterAutoscaler", "agent",
                         "awsQueue", "nodeHealth", "podDisruption"])
# What NTH's IMDS spot ITN monitor names its event: "spot-itn-" + a sha256 in hex (73 characters), cut to 63
# for the taint value (aws-node-termination-handler pkg/monitor/spotitn/spot-itn-monitor.go:88, node.go:454-468).
SPOT_ITN_EVENT = ("spot-itn-" + "ab" * 32)[:63]


def nth_node(taint_key: str, value: str, labels: dict[str, str] | None = None) -> NodeView:
    return NodeView("n", labels or {}, {}, (Taint(taint_key, value, "NoSchedule"),), unschedulable=True)


def unix(t: datetime.datetime) -> str:
    return str(int(t.timestamp()))


# -- AWS Node Termination Handler ------------------------------------------------------------------------------

def test_nth_spot_itn_deadline_is_two_minutes_from_now_whatever_labels_say() -> None:
    # NTH never writes action-time for a spot ITN; a label left from an earlier reboot event is no deadline.
    leftover = nth_node(wk.NTH_SPOT_ITN, SPOT_ITN_EVENT,
                        {wk.NTH_ACTION_TIME_LABEL: unix(NOW + datetime.timedelta(seconds=90))})
    notice = node_notice(leftover, NOW, ALL_SOURCES, False)
    assert notice is not None and notice.source == "nodeTerminationHandler"
    assert notice.deadline == NOW + NTH_DRAIN_TIMEOUT


def test_nth_scheduled_maintenance_deadline_counts_from_when_nth_acted() -> None:
    event = "instance-event-0d59937288b749b32"
    acted = NOW - datetime.timedelta(seconds=30)
    labels = {wk.NTH_EVENT_ID_LABEL: event, wk.NTH_ACTION_LABEL: wk.NTH_UNCORDON_AFTER_REBOOT,
              wk.NTH_ACTION_TIME_LABEL: unix(acted)}
    notice = node_notice(nth_node(wk.NTH_SCHEDULED_MAINTENANCE, event, labels), NOW, ALL_SOURCES, False)
    assert notice is not None and notice.deadline == acted + NTH_DRAIN_TIMEOUT
    # The labels of another event, or a time in the future, say nothing about this taint.
    other = nth_node(wk.NTH_SCHEDULED_MAINTENANCE, "instance-event-other", labels)
    assert node_notice(other, NOW, ALL_SOURCES, False).deadline == NOW + NTH_DRAIN_TIMEOUT  # type: ignore[union-attr]
    future = {**labels, wk.NTH_ACTION_TIME_LABEL: unix(NOW + datetime.timedelta(hours=1))}
    notice = node_notice(nth_node(wk.NTH_SCHEDULED_MAINTENANCE, event, future), NOW, ALL_SOURCES, False)
    assert notice is not None and notice.deadline == NOW + NTH_DRAIN_TIMEOUT


def test_a_63_digit_nth_label_is_no_time_and_raises_nothing() -> None:
    labels = {wk.NTH_EVENT_ID_LABEL: "e", wk.NTH_ACTION_LABEL: wk.NTH_UNCORDON_AFTER_REBOOT,
              wk.NTH_ACTION_TIME_LABEL: "9" * 63}
    for key in (wk.NTH_SPOT_ITN, wk.NTH_SCHEDULED_MAINTENANCE):
        notice = node_notice(nth_node(key, "e", labels), NOW, ALL_SOURCES, False)
        assert notice is not None and notice.deadline == NOW + NTH_DRAIN_TIMEOUT


# -- deadline annotations ----------------------------------------------------------------------------------------

def agent_node(kind: str, annotations: dict[str, str]) -> NodeView:
    return NodeView("n", {}, annotations, (Taint(wk.AGENT_INTERRUPTION_TAINT, kind, "NoSchedule"),))


def test_a_deadline_without_a_time_zone_is_read_as_utc() -> None:
    node = agent_node("aws-spot-itn", {wk.AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:01:00"})
    notice = node_notice(node, NOW, ALL_SOURCES, False)
    assert notice is not None and notice.deadline == NOW + datetime.timedelta(minutes=1)


def test_a_deadline_that_is_not_a_time_falls_back_to_the_kind_default() -> None:
    node = agent_node("gcp-preempted", {wk.AGENT_DEADLINE_ANNOTATION: "soon"})
    assert node_notice(node, NOW, ALL_SOURCES, False).deadline == NOW + datetime.timedelta(seconds=30)  # type: ignore[union-attr]


text = st.text(max_size=80)
known_keys = st.sampled_from([wk.NTH_ACTION_TIME_LABEL, wk.NTH_ACTION_LABEL, wk.NTH_EVENT_ID_LABEL,
                              wk.AGENT_DEADLINE_ANNOTATION, wk.AGENT_EVENT_ANNOTATION, wk.QUEUE_EVENT_ANNOTATION,
                              wk.NTH_SPOT_ITN, wk.NTH_SCHEDULED_MAINTENANCE, wk.NTH_ASG_LIFECYCLE,
                              wk.NTH_REBALANCE, wk.AGENT_INTERRUPTION_TAINT, wk.GKE_IMPENDING_TERMINATION,
                              wk.KARPENTER_DISRUPTION_V1BETA1, wk.CA_TO_BE_DELETED])
values = st.one_of(
    st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00", "2026-01-01T08:01:00", "2026-01-01T08:01:00+14:00",
                     "9" * 63, "-1", "1e12", wk.NTH_UNCORDON_AFTER_REBOOT, "aws-spot-itn", "aws-state-change",
                     "aws-scheduled", "disrupting", "node is shutting down", "e"]),
    st.integers(min_value=-10**70, max_value=10**70).map(str),
    text,
)
# Mostly the keys the detectors read, so that odd values reach the parsers; some keys of no meaning.
maps = st.tuples(st.dictionaries(known_keys, values, max_size=6), st.dictionaries(text, values, max_size=2)).map(
    lambda parts: {**parts[1], **parts[0]})


clocks = st.datetimes(min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(9000, 1, 1),
                     timezones=st.just(datetime.UTC))


@given(labels=maps, annotations=maps, taints=st.lists(st.tuples(known_keys | text, values, text), max_size=4),
       ready_status=st.sampled_from(["True", "False", "Unknown", ""]), message=values, now=clocks,
       sources=st.sets(st.sampled_from(sorted(ALL_SOURCES))), proactive=st.booleans())
def test_node_notice_never_raises(labels: dict[str, str], annotations: dict[str, str],
                                  taints: list[tuple[str, str, str]], ready_status: str, message: str,
                                  now: datetime.datetime, sources: set[str], proactive: bool) -> None:
    node = NodeView("n", labels, annotations, tuple(Taint(*t) for t in taints), ready_status == "True",
                    ready_status, "KubeletNotReady", message)
    notice = node_notice(node, now, sources, proactive)
    assert notice is None or (notice.source in sources and notice.deadline.tzinfo is not None)


# -- kubelet graceful node shutdown ------------------------------------------------------------------------------

def not_ready(status: str, reason: str, message: str) -> NodeView:
    return NodeView("n", {}, {}, (), False, status, reason, message)


def test_a_node_shutting_down_gracefully_is_told_from_one_that_vanished() -> None:
    # kubelet's Ready condition during graceful shutdown; several errors are joined as "[a, b]".
    for message in ("node is shutting down", "[container runtime is down, node is shutting down]"):
        notice = node_notice(not_ready("False", "KubeletNotReady", message), NOW, ALL_SOURCES, False)
        assert notice is not None and notice.source == "gke" and notice.graceful
        # With the gke source off, node health still sees it, and still as graceful.
        notice = node_notice(not_ready("False", "KubeletNotReady", message), NOW, ALL_SOURCES - {"gke"}, False)
        assert notice is not None and notice.source == "nodeHealth" and notice.graceful
    vanished = node_notice(not_ready("Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."), NOW,
                           ALL_SOURCES, False)
    assert vanished is not None and vanished.source == "nodeHealth" and not vanished.graceful
    runtime_down = node_notice(not_ready("False", "KubeletNotReady", "container runtime is down"), NOW,
                               ALL_SOURCES, False)
    assert runtime_down is not None and not runtime_down.graceful


def pod(reason: str) -> PodView:
    return PodView(name="w", role="worker", round=1, pool="p", zone="a", node="n", phase="Failed", ready=False,
                   deleting=False, created=NOW, disruption_reason=reason)


def test_a_pod_the_kubelet_terminates_is_a_graceful_notice() -> None:
    by_kubelet = pod_notice(pod("TerminationByKubelet"), NOW, ALL_SOURCES)
    assert by_kubelet is not None and by_kubelet.graceful
    evicted = pod_notice(pod("EvictionByEvictionAPI"), NOW, ALL_SOURCES)
    assert evicted is not None and not evicted.graceful


# -- the AWS queue's marks -----------------------------------------------------------------------------------------

def test_every_mark_the_queue_wrote_is_source_aws_queue() -> None:
    event = "1e5527d7-bb36-4607-3370-4164db56a40e"
    for kind in ("aws-spot-itn", "aws-scheduled", "aws-state-change"):
        node = agent_node(kind, {wk.AGENT_EVENT_ANNOTATION: event, wk.QUEUE_EVENT_ANNOTATION: event,
                                 wk.AGENT_DEADLINE_ANNOTATION: "2026-01-01T08:02:00Z"})
        notice = node_notice(node, NOW, ALL_SOURCES, False)
        assert notice is not None and notice.source == "awsQueue"
        assert node_notice(node, NOW, ALL_SOURCES - {"awsQueue"}, False) is None
    rebalance = agent_node("aws-rebalance", {wk.AGENT_EVENT_ANNOTATION: event, wk.QUEUE_EVENT_ANNOTATION: event})
    assert node_notice(rebalance, NOW, ALL_SOURCES - {"awsQueue"}, True) is None


def test_a_mark_the_agent_replaced_is_the_agents() -> None:
    node = agent_node("aws-spot-itn", {wk.AGENT_EVENT_ANNOTATION: "imds-event", wk.QUEUE_EVENT_ANNOTATION: "queue"})
    notice = node_notice(node, NOW, ALL_SOURCES - {"awsQueue"}, False)
    assert notice is not None and notice.source == "agent"
    assert node_notice(agent_node("aws-spot-itn", {}), NOW, ALL_SOURCES, False).source == "agent"  # type: ignore[union-attr]


def test_a_far_notice_does_not_hide_a_near_one() -> None:
    far = (NOW + datetime.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    node = NodeView("n", {}, {wk.AGENT_DEADLINE_ANNOTATION: far},
                    (Taint(wk.AGENT_INTERRUPTION_TAINT, "aws-scheduled", "NoSchedule"),), False, "Unknown",
                    "NodeStatusUnknown", "Kubelet stopped posting node status.")
    notice = node_notice(node, NOW, ALL_SOURCES, False)
    assert notice is not None and notice.source == "nodeHealth"
