"""Add and remove simulated nodes, and apply the termination signals that real handlers apply to them.

Each signal does to the Node (and its pods) what the named component does in a real cluster: the AWS Node
Termination Handler's taints and cordon, Karpenter's disruption taint, GKE's termination handler taint and
kubelet graceful node shutdown, AKS node auto-drain, cluster-autoscaler scale-down, spotrain-agent's taint,
a node that stops heartbeating, and a node that is deleted.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from spotrain_dev import topology
from spotrain_dev.timestamps import rfc3339, utc_now
from spotrain_dev.topology import Topology
from spotrain_operator import wellknown as wk

NTH_MAX_TAINT_VALUE = 63  # aws-node-termination-handler pkg/node/node.go:68
KUBELET_SHUTDOWN_POD_MESSAGE = "Pod was terminated in response to imminent node shutdown."  # nodeShutdownMessage


@dataclass(frozen=True)
class Signal:
    name: str
    description: str
    apply: Callable[[NodeSimulator, str, int], None]


class NodeSimulator:
    def __init__(self, api: client.CoreV1Api, topo: Topology):
        self.api = api
        self.topology = topo

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, topo: Topology | None = None) -> NodeSimulator:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        return cls(client.CoreV1Api(api_client), topo or topology.load())

    # -- nodes ---------------------------------------------------------------------------------------------

    def _next_index(self) -> int:
        nodes = self.api.list_node(label_selector="type=kwok").items
        used = [int((n.metadata.annotations or {}).get(topology.INDEX_ANNOTATION, 0)) for n in nodes]
        return max(used, default=0) + 1

    def add(self, pool_name: str, zone: str, instance_type: str | None = None, name: str | None = None,
            labels: dict[str, str] | None = None) -> str:
        """A new node of ``pool_name`` in ``zone``; ``labels`` are added to the pool's (tests give their nodes a
        label of their own so that jobs and signals in one test never touch another test's nodes)."""
        pool = self.topology.pool(pool_name)
        if zone not in pool.zones:
            raise ValueError(f"zone {zone!r} is not one of pool {pool_name!r}'s zones: {', '.join(pool.zones)}")
        itype = instance_type or pool.instance_types[0]
        index = self._next_index()
        name = name or f"{pool.name}-{zone.rsplit('-', 1)[-1]}-{index}"
        manifest = topology.node_manifest(self.topology, pool, zone, itype, name, index)
        manifest["metadata"]["labels"].update(labels or {})
        self.api.create_node(manifest)
        return name

    def create_topology(self) -> list[str]:
        names = []
        index = self._next_index()
        for pool, zone, itype in self.topology.node_specs():
            name = f"{pool.name}-{zone.rsplit('-', 1)[-1]}-{index}"
            self.api.create_node(topology.node_manifest(self.topology, pool, zone, itype, name, index))
            names.append(name)
            index += 1
        return names

    def remove(self, name: str) -> None:
        try:
            self.api.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise

    def ready_count(self, names: list[str]) -> int:
        ready = 0
        for node in self.api.list_node(label_selector="type=kwok").items:
            if node.metadata.name in names and _is_ready(node):
                ready += 1
        return ready

    def list(self) -> list[dict[str, str]]:
        rows = []
        for node in self.api.list_node().items:
            labels = node.metadata.labels or {}
            rows.append(
                {
                    "name": node.metadata.name,
                    "pool": labels.get(topology.POOL_LABEL, ""),
                    "zone": labels.get(wk.ZONE, ""),
                    "instance-type": labels.get(wk.INSTANCE_TYPE, ""),
                    "capacity": capacity_type(labels),
                    "ready": "Ready" if _is_ready(node) else "NotReady",
                    "taints": ",".join(t.key for t in node.spec.taints or []),
                }
            )
        return rows

    # -- signals -------------------------------------------------------------------------------------------

    def signal(self, node: str, signal: str, lead_seconds: int = 120) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}; known: {', '.join(SIGNALS)}")
        SIGNALS[signal].apply(self, node, lead_seconds)

    def taint(self, node: str, key: str, value: str = "", effect: str = "NoSchedule",
              annotations: dict[str, str] | None = None) -> None:
        current = self.api.read_node(node)
        taints = [t for t in current.spec.taints or [] if t.key != key]
        taints.append(client.V1Taint(key=key, value=value or None, effect=effect))
        body: dict[str, Any] = {"spec": {"taints": [self.api.api_client.sanitize_for_serialization(t) for t in taints]}}
        if annotations:
            body["metadata"] = {"annotations": annotations}
        self.api.patch_node(node, body)

    def cordon(self, node: str) -> None:
        """``kubectl cordon``, as NTH's drain helper does it (k8s.io/kubectl/pkg/drain RunCordonOrUncordon)."""
        self.api.patch_node(node, {"spec": {"unschedulable": True}})

    def label(self, node: str, labels: dict[str, str]) -> None:
        self.api.patch_node(node, {"metadata": {"labels": labels}})

    def set_not_ready(self, node: str, reason: str, message: str, status: str = "Unknown") -> None:
        # KWOK keeps a managed node Ready; a node whose kubelet has gone stops being managed first.
        self.api.patch_node(node, {"metadata": {"annotations": {topology.KWOK_ANNOTATION: None}}})
        now = rfc3339(utc_now())
        condition = {"type": "Ready", "status": status, "reason": reason, "message": message,
                     "lastHeartbeatTime": now, "lastTransitionTime": now}
        self.api.patch_node_status(node, {"status": {"conditions": [condition]}})

    def terminate_pods_for_shutdown(self, node: str, finished: bool) -> None:
        """What kubelet graceful node shutdown does to each pod on the node (kubernetes
        pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go, managerImpl.processShutdownEvent): the pod is
        killed with the shutdown grace period and gets the DisruptionTarget condition, reason
        TerminationByKubelet; once its containers have stopped (``finished``) its phase is Failed with
        reason Terminated and the message below (nodeShutdownReason, nodeShutdownMessage)."""
        now = rfc3339(utc_now())
        disruption = {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                      "message": KUBELET_SHUTDOWN_POD_MESSAGE, "lastTransitionTime": now}
        for pod in self.api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items:
            status: dict[str, Any] = {"conditions": [disruption]}
            if finished:
                status.update(phase="Failed", reason="Terminated", message=KUBELET_SHUTDOWN_POD_MESSAGE,
                              conditions=[disruption, {"type": "Ready", "status": "False", "lastTransitionTime": now}])
            self.api.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})


def _is_ready(node: client.V1Node) -> bool:
    """Ready, and settled: the node lifecycle controller has also lifted its not-ready taint."""
    ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
    return ready and not any(t.key == wk.NODE_NOT_READY for t in node.spec.taints or [])


def capacity_type(labels: dict[str, str]) -> str:
    """spot or on-demand, by whichever cloud's labels the node carries."""
    if labels.get(wk.KARPENTER_CAPACITY_TYPE):
        return labels[wk.KARPENTER_CAPACITY_TYPE]
    if labels.get(wk.EKS_CAPACITY_TYPE):
        return "spot" if labels[wk.EKS_CAPACITY_TYPE] == "SPOT" else "on-demand"
    if labels.get(wk.GKE_SPOT) == "true" or labels.get(wk.GKE_PREEMPTIBLE) == "true":
        return "spot"
    if labels.get(wk.AKS_PRIORITY) == "spot":
        return "spot"
    return "on-demand"


# -- the AWS Node Termination Handler, as aws/aws-node-termination-handler writes it (commit 62a8761d, with
# --taint-node=true; its default is false, pkg/config/config.go:231, and then it writes no taint at all) --------
#
# For each event NTH runs the monitor's pre-drain task, then cordons (and, except for a rebalance
# recommendation, drains) the node: pkg/interruptionevent/draincordon/handler.go:83-119. The taint's value is the
# event id cut to 63 characters, its effect --taint-effect (default NoSchedule, config.go:82): node.go:454-548,
# 770-857. No taint carries a time. The drain that follows (evictions with the pods' own grace period, within
# --node-termination-grace-period) is not simulated here: the operator's own drain is what the tests exercise.
# NTH's --taint-node writes no time and the IMDS notice's own time never reaches the Node, so ``lead`` is unused.

def _nth_event_id(prefix: str) -> str:
    """An IMDS-mode event id: "<kind>-" and a sha256 in hex (spot-itn-monitor.go:88,
    rebalance-recommendation-monitor.go:86, asg-lifecycle-monitor.go:86)."""
    return f"{prefix}-{hashlib.sha256(uuid.uuid4().bytes).hexdigest()}"


def _nth_taint(key: str, event_prefix: str) -> Callable[[NodeSimulator, str, int], None]:
    def apply(sim: NodeSimulator, node: str, lead: int) -> None:
        sim.taint(node, key, _nth_event_id(event_prefix)[:NTH_MAX_TAINT_VALUE])
        sim.cordon(node)
    return apply


def _nth_scheduled_maintenance(sim: NodeSimulator, node: str, lead: int) -> None:
    """A reboot-like scheduled event (instance-stop, instance-retirement, instance-reboot, system-reboot); NTH's
    pre-drain task for it (scheduled-event-monitor.go:117-143): label event-id, taint with the event id, then,
    unless the node is already cordoned, label action=UncordonAfterReboot and action-time = the unix time now
    (node.go:227-299). Other scheduled events get no pre-drain task: only the cordon and drain."""
    event = f"instance-event-{uuid.uuid4().hex[:17]}"
    sim.label(node, {wk.NTH_EVENT_ID_LABEL: event})
    sim.taint(node, wk.NTH_SCHEDULED_MAINTENANCE, event[:NTH_MAX_TAINT_VALUE])
    if not sim.api.read_node(node).spec.unschedulable:
        sim.label(node, {wk.NTH_ACTION_LABEL: wk.NTH_UNCORDON_AFTER_REBOOT})
        sim.label(node, {wk.NTH_ACTION_TIME_LABEL: str(int(utc_now().timestamp()))})
    sim.cordon(node)


def _taint(key: str, value: str = "", effect: str = "NoSchedule") -> Callable[[NodeSimulator, str, int], None]:
    return lambda sim, node, lead: sim.taint(node, key, value, effect)


def _ca_scale_down(sim: NodeSimulator, node: str, lead: int) -> None:
    sim.taint(node, wk.CA_TO_BE_DELETED, str(int(utc_now().timestamp())))


def _gke_shutdown(finished: bool) -> Callable[[NodeSimulator, str, int], None]:
    """kubelet graceful node shutdown: the node reports Ready=False, reason KubeletNotReady, message "node is
    shutting down" (nodeshutdown_manager_linux.go, ShutdownStatus; pkg/kubelet/nodestatus/setters.go,
    ReadyCondition), and its pods are terminated; ``finished``: their containers have stopped."""
    def apply(sim: NodeSimulator, node: str, lead: int) -> None:
        sim.set_not_ready(node, "KubeletNotReady", "node is shutting down", status="False")
        sim.terminate_pods_for_shutdown(node, finished)
    return apply


def _agent(sim: NodeSimulator, node: str, lead: int) -> None:
    deadline = rfc3339(utc_now() + datetime.timedelta(seconds=lead))
    sim.taint(node, wk.AGENT_INTERRUPTION_TAINT, "aws-spot-itn", annotations={wk.AGENT_DEADLINE_ANNOTATION: deadline})


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in [
        Signal("nth-spot-itn", "AWS NTH: spot interruption taint (value: event id) + cordon",
               _nth_taint(wk.NTH_SPOT_ITN, "spot-itn")),
        Signal("nth-rebalance", "AWS NTH: rebalance recommendation taint + cordon",
               _nth_taint(wk.NTH_REBALANCE, "rebalance-recommendation")),
        Signal("nth-asg-lifecycle", "AWS NTH: ASG lifecycle termination taint + cordon",
               _nth_taint(wk.NTH_ASG_LIFECYCLE, "target-lifecycle-state-terminated")),
        Signal("nth-scheduled-maintenance", "AWS NTH: reboot-like scheduled event: event-id label, taint, "
               "action/action-time labels, cordon", _nth_scheduled_maintenance),
        Signal("karpenter", "Karpenter v1: karpenter.sh/disrupted:NoSchedule", _taint(wk.KARPENTER_DISRUPTED)),
        Signal("karpenter-v1beta1", "Karpenter v1beta1: karpenter.sh/disruption=disrupting",
               _taint(wk.KARPENTER_DISRUPTION_V1BETA1, "disrupting")),
        Signal("gke-impending", "GKE: cloud.google.com/impending-node-termination taint",
               _taint(wk.GKE_IMPENDING_TERMINATION)),
        Signal("gke-shutdown-begins", "GKE: kubelet graceful node shutdown under way (NotReady 'node is shutting "
               "down', pods DisruptionTarget while their containers stop)", _gke_shutdown(finished=False)),
        Signal("gke-shutdown", "GKE: kubelet graceful node shutdown done (NotReady, pods Failed, DisruptionTarget)",
               _gke_shutdown(finished=True)),
        Signal("aks-drain", "AKS: node auto-drain taint", _taint(wk.AKS_REMEDIATOR_UNSCHEDULABLE)),
        Signal("ca-scale-down", "cluster-autoscaler: ToBeDeletedByClusterAutoscaler", _ca_scale_down),
        Signal("spotrain-agent", "spotrain-agent: interruption taint + deadline annotation", _agent),
        Signal("not-ready", "the node stops heartbeating (Ready=Unknown)",
               lambda sim, node, lead: sim.set_not_ready(node, "NodeStatusUnknown",
                                                         "Kubelet stopped posting node status.")),
        Signal("delete", "the Node object is deleted", lambda sim, node, lead: sim.remove(node)),
    ]
}
