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


@dataclass(frozen=True)
class TerminationNotice:
    node: str
    source: str  # one of api.SOURCE_NAMES
    reason: str  # what was seen, for events and status
    deadline: datetime.datetime
    early_warning: bool = False  # a rebalance recommendation: act only if the job asks for proactive migration


def _unix(value: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromtimestamp(int(value or ""), datetime.UTC)
    except ValueError:
        return None


def _nth(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    action_time = _unix(node.labels.get(wk.NTH_ACTION_TIME_LABEL))
    for key, early in (
        (wk.NTH_SPOT_ITN, False),
        (wk.NTH_ASG_LIFECYCLE, False),
        (wk.NTH_SCHEDULED_MAINTENANCE, False),
        (wk.NTH_REBALANCE, True),
    ):
        if node.taint(key):
            reason = f"AWS Node Termination Handler taint {key}"
            return TerminationNotice(node.name, "nodeTerminationHandler", reason, action_time or now + AWS_NOTICE,
                                     early)
    return None


def _karpenter(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    disruption = node.taint(wk.KARPENTER_DISRUPTION_V1BETA1)
    if node.taint(wk.KARPENTER_DISRUPTED) or (disruption and disruption.value == "disrupting"):
        return TerminationNotice(node.name, "karpenter", "Karpenter is disrupting the node", now + AWS_NOTICE)
    return None


def _gke(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    if node.taint(wk.GKE_IMPENDING_TERMINATION):
        return TerminationNotice(node.name, "gke", "GKE impending node termination", now + GCP_NOTICE)
    if not node.ready and "shutting down" in node.ready_message:
        return TerminationNotice(node.name, "gke", "graceful node shutdown", now + GCP_NOTICE)
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
    deadline = parse_time(node.annotations.get(wk.AGENT_DEADLINE_ANNOTATION))
    if deadline is None:
        deadline = now + _AGENT_DEFAULT_NOTICE.get(kind.split("-", 1)[0], UNKNOWN_NOTICE)
    source = "awsQueue" if kind == "aws-state-change" else "agent"
    return TerminationNotice(node.name, source, f"spotrain-agent: {kind}", deadline, kind == "aws-rebalance")


def _node_health(node: NodeView, now: datetime.datetime) -> TerminationNotice | None:
    if node.deleting:
        return TerminationNotice(node.name, "nodeHealth", "Node is being deleted", now)
    if not node.ready:
        return TerminationNotice(node.name, "nodeHealth", f"Node {node.ready_status}: {node.ready_reason}", now)
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
        if notice and notice.source in enabled and (proactive_on_rebalance or not notice.early_warning):
            return notice if notice.deadline - now <= ACT_WITHIN else None
    return None


def pod_notice(pod: PodView, now: datetime.datetime, sources: Iterable[str]) -> TerminationNotice | None:
    if "podDisruption" not in set(sources) or pod.node is None:
        return None
    if pod.disruption_reason in POD_DISRUPTION_REASONS:
        source = "gke" if pod.disruption_reason == "TerminationByKubelet" else "podDisruption"
        reason = f"pod DisruptionTarget: {pod.disruption_reason}"
        return TerminationNotice(pod.node, source, reason, now + UNKNOWN_NOTICE)
    return None
