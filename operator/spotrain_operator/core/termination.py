"""Spot interruption signals -> one ``TerminationNotice`` per doomed node.

Every source a cloud or handler uses (taints, labels, annotations, node health, pod DisruptionTarget
conditions) is mapped here, so the drain logic deals with a single shape whatever announced the loss.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from spotrain_operator import wellknown as wk
from spotrain_operator.core.model import NodeView, PodView, parse_time

AWS_NOTICE = datetime.timedelta(seconds=120)
GCP_NOTICE = datetime.timedelta(seconds=30)
AZURE_NOTICE = datetime.timedelta(seconds=30)
UNKNOWN_NOTICE = datetime.timedelta(seconds=30)
# Scheduled maintenance can be announced days ahead; such a notice is acted on once it is this close.
ACT_WITHIN = datetime.timedelta(minutes=15)
# The AWS Node Termination Handler drains a node as soon as it taints it and gives the drain this long
# (--node-termination-grace-period, default 120 s: aws/aws-node-termination-handler pkg/config/config.go:42, used
# as the drain helper's Timeout at pkg/node/node.go:752; commit 62a8761d).
NTH_DRAIN_TIMEOUT = datetime.timedelta(seconds=120)


@dataclass(frozen=True)
class TerminationNotice:
    node: str
    source: str  # one of api.SOURCE_NAMES
    reason: str  # what was seen, for events and status
    deadline: datetime.datetime
    early_warning: bool = False  # a rebalance recommendation: act only if the job asks for proactive migration
    # The node's kubelet is shutting down gracefully (graceful node shutdown): its pods get their SIGTERM and
    # their grace period from the kubelet, so they can still checkpoint; a node that vanished cannot.
    graceful: bool = False


def _unix(value: str | None) -> datetime.datetime | None:
    """Unix seconds as labels carry them; None for anything else (a 63-digit label is not a time)."""
    if not value or len(value) > 11 or not value.isascii() or not value.isdigit():
        return None
    return datetime.datetime.fromtimestamp(int(value), datetime.UTC)


def _nth_acted_at(node: NodeView, taint_value: str, now: datetime.datetime) -> datetime.datetime | None:
    """When NTH acted on the scheduled event its taint names, where NTH recorded it.

    NTH writes a time on the node in one case only: for a reboot-like scheduled event it labels the node
    ``event-id`` (the event), then ``action=UncordonAfterReboot`` and ``action-time`` = the unix time it added
    that label, right after the taint (pkg/monitor/scheduledevent/scheduled-event-monitor.go:117-143,
    pkg/node/node.go:227-299). The time is when NTH acted, never a deadline; it counts only when the labels
    name the same event as the taint (NTH truncates the taint value to 63 characters: node.go:532-548) and it
    is not in the future."""
    labels = node.labels
    event = labels.get(wk.NTH_EVENT_ID_LABEL, "")
    if labels.get(wk.NTH_ACTION_LABEL) != wk.NTH_UNCORDON_AFTER_REBOOT or not event or event[:63] != taint_value:
        return None
    acted = _unix(labels.get(wk.NTH_ACTION_TIME_LABEL))
    return acted if acted is not None and acted <= now else None


def _nth(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    """The AWS Node Termination Handler's taints (written only with --taint-node, which defaults to false:
    pkg/config/config.go:231; without it NTH only cordons and evicts, which podDisruption sees).

    Each taint's value is NTH's event id cut to 63 characters (pkg/node/node.go:454-548), not a time, and NTH
    writes no time for spot-itn, asg-lifecycle-termination or rebalance-recommendation. Whatever the event's own
    time, NTH drains the node right after tainting it (the spot ITN's drain time is the interruption time less
    the 120 s grace period, i.e. at once; scheduled events and the ASG target lifecycle state start "now":
    scheduled-event-monitor.go:109, asg-lifecycle-monitor.go:77), and the pods are gone within its drain
    timeout. So the deadline is NTH_DRAIN_TIMEOUT after NTH acted: after the action-time label where NTH wrote
    one, else after now (the operator cannot know how long ago an untimed taint appeared; the caller keeps the
    deadline of the first pass that saw it). The scheduled event's own start (NotBefore) is not on the node."""
    for key, early in (
        (wk.NTH_SPOT_ITN, False),
        (wk.NTH_ASG_LIFECYCLE, False),
        (wk.NTH_SCHEDULED_MAINTENANCE, False),
        (wk.NTH_REBALANCE, True),
    ):
        taint = node.taint(key)
        if taint:
            acted = (_nth_acted_at(node, taint.value, now) if key == wk.NTH_SCHEDULED_MAINTENANCE else None) or now
            reason = f"AWS Node Termination Handler taint {key}"
            return TerminationNotice(node.name, "nodeTerminationHandler", reason, acted + NTH_DRAIN_TIMEOUT, early)
    return None


def _karpenter(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    disruption = node.taint(wk.KARPENTER_DISRUPTION_V1BETA1)
    if node.taint(wk.KARPENTER_DISRUPTED) or (disruption and disruption.value == "disrupting"):
        return TerminationNotice(node.name, "karpenter", "Karpenter is disrupting the node", now + AWS_NOTICE)
    return None


# kubelet's graceful node shutdown manager reports this error while the node shuts down (kubernetes
# pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go, managerImpl.ShutdownStatus); the Ready condition setter
# turns it into Ready=False, reason KubeletNotReady, with the errors as the message (several join as "[a, b]":
# pkg/kubelet/nodestatus/setters.go, ReadyCondition). A node that vanished goes Ready=Unknown instead, set by the
# node lifecycle controller when the kubelet stops posting ("Kubelet stopped posting node status.").
KUBELET_SHUTTING_DOWN = "node is shutting down"


def _shutting_down(node: NodeView) -> bool:
    return node.ready_status == "False" and KUBELET_SHUTTING_DOWN in node.ready_message


def _gke(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    if node.taint(wk.GKE_IMPENDING_TERMINATION):
        return TerminationNotice(node.name, "gke", "GKE impending node termination", now + GCP_NOTICE)
    if _shutting_down(node):
        return TerminationNotice(node.name, "gke", "graceful node shutdown", now + GCP_NOTICE, graceful=True)
    return None


def _aks(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    if node.taint(wk.AKS_REMEDIATOR_UNSCHEDULABLE):
        return TerminationNotice(node.name, "aks", "AKS node auto-drain", now + AZURE_NOTICE)
    return None


def _cluster_autoscaler(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    # DeletionCandidateOfClusterAutoscaler is only a hint that may be withdrawn; ToBeDeleted is the decision.
    if node.taint(wk.CA_TO_BE_DELETED):
        return TerminationNotice(node.name, "clusterAutoscaler", "cluster-autoscaler scale-down", now + AWS_NOTICE)
    return None


_AGENT_DEFAULT_NOTICE = {"aws": AWS_NOTICE, "gcp": GCP_NOTICE, "azure": AZURE_NOTICE}


def _agent(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    taint = node.taint(wk.AGENT_INTERRUPTION_TAINT)
    if not taint:
        return None
    kind = taint.value or "unknown"
    # A deadline without a time zone is read as UTC, one that is not a time is ignored (model.parse_time).
    deadline = parse_time(node.annotations.get(wk.AGENT_DEADLINE_ANNOTATION))
    if deadline is None:
        deadline = now + _AGENT_DEFAULT_NOTICE.get(kind.split("-", 1)[0], UNKNOWN_NOTICE)
    if _from_queue(node, kind):
        return TerminationNotice(node.name, "awsQueue", f"AWS interruption queue: {kind}", deadline,
                                 kind == "aws-rebalance")
    return TerminationNotice(node.name, "agent", f"spotrain-agent: {kind}", deadline, kind == "aws-rebalance")


def _from_queue(node: NodeView, kind: str) -> bool:
    """Whether the operator's AWS queue mode set the node's interruption mark: it writes the EventBridge event
    id to QUEUE_EVENT_ANNOTATION in the patch that sets the taint, and the mark stays the queue's while the
    mark's event id is that one (a stronger mark from the agent replaces the event id). Only the queue sees
    instance state changes."""
    event = node.annotations.get(wk.AGENT_EVENT_ANNOTATION)
    return kind == "aws-state-change" or bool(event and node.annotations.get(wk.QUEUE_EVENT_ANNOTATION) == event)


def _node_health(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    if node.deleting:
        return TerminationNotice(node.name, "nodeHealth", "Node is being deleted", now)
    if not node.ready:
        return TerminationNotice(node.name, "nodeHealth", f"Node {node.ready_status}: {node.ready_reason}", now,
                                 graceful=_shutting_down(node))
    return None


_NODE_DETECTORS: tuple[Callable[[NodeView, datetime.datetime], TerminationNotice | None], ...] = (
    _agent, _nth, _karpenter, _gke, _aks, _cluster_autoscaler, _node_health,
)

POD_DISRUPTION_REASONS = {
    "EvictionByEvictionAPI",
    "DeletionByTaintManager",
    "PreemptionByScheduler",
    "TerminationByKubelet",
    "DeletionByPodGC",
}


def node_notice(node: NodeView, now: datetime.datetime, sources: Iterable[str],
                proactive_on_rebalance: bool) -> TerminationNotice | None:
    """The first notice an enabled source gives for the node; a rebalance recommendation counts only when
    the job asks for proactive migration."""
    enabled = set(sources)
    for detect in _NODE_DETECTORS:
        notice = detect(node, now)
        if (notice and notice.source in enabled and (proactive_on_rebalance or not notice.early_warning)
                and notice.deadline - now <= ACT_WITHIN):
            return notice
    return None


def pod_notice(pod: PodView, now: datetime.datetime, sources: Iterable[str]) -> TerminationNotice | None:
    if "podDisruption" not in set(sources) or pod.node is None:
        return None
    if pod.disruption_reason in POD_DISRUPTION_REASONS:
        # The kubelet terminates the pod itself, with a grace period (graceful node shutdown or node-pressure
        # eviction: kubernetes pkg/kubelet/nodeshutdown/nodeshutdown_manager.go, podManager.killPods).
        by_kubelet = pod.disruption_reason == "TerminationByKubelet"
        reason = f"pod DisruptionTarget: {pod.disruption_reason}"
        return TerminationNotice(pod.node, "gke" if by_kubelet else "podDisruption", reason, now + UNKNOWN_NOTICE,
                                 graceful=by_kubelet)
    return None
