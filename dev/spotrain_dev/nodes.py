"""Add and remove simulated nodes, and apply the termination signals that real handlers apply to them.

Each signal does to the Node (and its pods) what the named component does in a real cluster: the AWS Node
Termination Handler's taints and cordon, Karpenter's disruption taint, GKE's termination handler taint and
kubelet graceful node shutdown, AKS node auto-drain, cluster-autoscaler scale-down, spotrain-agent's taint,
a node that stops heartbeating, and a node that is deleted.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from spotrain_dev import topology
from spotrain_dev.topology import Topology
from spotrain_operator import wellknown as wk


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _rfc3339(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


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

    def taint(self, node: str, key: str, value: str = "", effect: str = "NoSchedule", cordon: bool = False,
              labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> None:
        current = self.api.read_node(node)
        taints = [t for t in current.spec.taints or [] if t.key != key]
        taints.append(client.V1Taint(key=key, value=value or None, effect=effect))
        body: dict[str, Any] = {"spec": {"taints": [self.api.api_client.sanitize_for_serialization(t) for t in taints]}}
        if cordon:
            body["spec"]["unschedulable"] = True
        if labels or annotations:
            body["metadata"] = {"labels": labels or {}, "annotations": annotations or {}}
        self.api.patch_node(node, body)

    def set_not_ready(self, node: str, reason: str, message: str, status: str = "Unknown") -> None:
        # KWOK keeps a managed node Ready; a node whose kubelet has gone stops being managed first.
        self.api.patch_node(node, {"metadata": {"annotations": {topology.KWOK_ANNOTATION: None}}})
        now = _rfc3339(_now())
        condition = {"type": "Ready", "status": status, "reason": reason, "message": message,
                     "lastHeartbeatTime": now, "lastTransitionTime": now}
        self.api.patch_node_status(node, {"status": {"conditions": [condition]}})

    def fail_pods_for_shutdown(self, node: str) -> None:
        """What kubelet graceful node shutdown does to each pod on the node."""
        now = _rfc3339(_now())
        for pod in self.api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items:
            body = {
                "status": {
                    "phase": "Failed",
                    "reason": "Terminated",
                    "message": "Pod was terminated in response to imminent node shutdown.",
                    "conditions": [
                        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                         "message": "Pod was terminated in response to imminent node shutdown.",
                         "lastTransitionTime": now},
                        {"type": "Ready", "status": "False", "lastTransitionTime": now},
                    ],
                }
            }
            self.api.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, body)


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


def _nth(key: str) -> Callable[[NodeSimulator, str, int], None]:
    def apply(sim: NodeSimulator, node: str, lead: int) -> None:
        action_time = _now() + datetime.timedelta(seconds=lead)
        # NTH names its event ids after the event kind and a hash; the value only has to be unique.
        sim.taint(node, key, f"{key.rsplit('/', 1)[-1]}-{uuid.uuid4().hex[:8]}", cordon=True,
                  labels={wk.NTH_ACTION_TIME_LABEL: str(int(action_time.timestamp()))})
    return apply


def _taint(key: str, value: str = "", effect: str = "NoSchedule") -> Callable[[NodeSimulator, str, int], None]:
    return lambda sim, node, lead: sim.taint(node, key, value, effect)


def _ca_scale_down(sim: NodeSimulator, node: str, lead: int) -> None:
    sim.taint(node, wk.CA_TO_BE_DELETED, str(int(_now().timestamp())))


def _gke_shutdown(sim: NodeSimulator, node: str, lead: int) -> None:
    sim.set_not_ready(node, "KubeletNotReady", "node is shutting down", status="False")
    sim.fail_pods_for_shutdown(node)


def _agent(sim: NodeSimulator, node: str, lead: int) -> None:
    deadline = _rfc3339(_now() + datetime.timedelta(seconds=lead))
    sim.taint(node, wk.AGENT_INTERRUPTION_TAINT, "aws-spot-itn", annotations={wk.AGENT_DEADLINE_ANNOTATION: deadline})


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in [
        Signal("nth-spot-itn", "AWS NTH: spot interruption notice taint + cordon", _nth(wk.NTH_SPOT_ITN)),
        Signal("nth-rebalance", "AWS NTH: rebalance recommendation taint + cordon", _nth(wk.NTH_REBALANCE)),
        Signal("nth-asg-lifecycle", "AWS NTH: ASG lifecycle termination taint", _nth(wk.NTH_ASG_LIFECYCLE)),
        Signal("nth-scheduled-maintenance", "AWS NTH: scheduled maintenance taint",
               _nth(wk.NTH_SCHEDULED_MAINTENANCE)),
        Signal("karpenter", "Karpenter v1: karpenter.sh/disrupted:NoSchedule", _taint(wk.KARPENTER_DISRUPTED)),
        Signal("karpenter-v1beta1", "Karpenter v1beta1: karpenter.sh/disruption=disrupting",
               _taint(wk.KARPENTER_DISRUPTION_V1BETA1, "disrupting")),
        Signal("gke-impending", "GKE: cloud.google.com/impending-node-termination taint",
               _taint(wk.GKE_IMPENDING_TERMINATION)),
        Signal("gke-shutdown", "GKE: kubelet graceful node shutdown (NotReady, pods DisruptionTarget)",
               _gke_shutdown),
        Signal("aks-drain", "AKS: node auto-drain taint", _taint(wk.AKS_REMEDIATOR_UNSCHEDULABLE)),
        Signal("ca-scale-down", "cluster-autoscaler: ToBeDeletedByClusterAutoscaler", _ca_scale_down),
        Signal("spotrain-agent", "spotrain-agent: interruption taint + deadline annotation", _agent),
        Signal("not-ready", "the node stops heartbeating (Ready=Unknown)",
               lambda sim, node, lead: sim.set_not_ready(node, "NodeStatusUnknown",
                                                         "Kubelet stopped posting node status.")),
        Signal("delete", "the Node object is deleted", lambda sim, node, lead: sim.remove(node)),
    ]
}
