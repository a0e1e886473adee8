"""The simulated spot topology (dev/cluster.yaml) and the KWOK Node objects it becomes.

Each pool follows one cloud's conventions ("style"), so the devcluster carries the labels and taints that
EKS with Karpenter, EKS managed node groups, GKE and AKS really put on spot and on-demand nodes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TOPOLOGY = Path(__file__).resolve().parents[1] / "cluster.yaml"

# Every node of the devcluster carries these; KWOK manages exactly the nodes with the annotation.
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
INDEX_ANNOTATION = "dev.spotrain.dev/index"
POOL_LABEL = "dev.spotrain.dev/pool"

STYLES = ("karpenter", "eks-managed", "gke", "aks")
CAPACITY_TYPES = ("spot", "on-demand")


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class InstanceType:
    name: str
    cpu: str
    memory: str
    gpu: int = 0


@dataclass(frozen=True)
class Pool:
    name: str
    style: str
    capacity_type: str
    instance_types: tuple[str, ...]
    nodes_per_zone: int
    zones: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    region: str
    zones: tuple[str, ...]
    instance_types: dict[str, InstanceType]
    pools: tuple[Pool, ...]

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise TopologyError(f"no pool named {name!r}; pools: {', '.join(p.name for p in self.pools)}")

    def node_specs(self) -> list[tuple[Pool, str, str]]:
        """(pool, zone, instance type) for every node the file asks for, instance types taken in turn."""
        specs = []
        for pool in self.pools:
            for zone in pool.zones:
                for i in range(pool.nodes_per_zone):
                    specs.append((pool, zone, pool.instance_types[i % len(pool.instance_types)]))
        return specs


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise TopologyError(f"{where}: missing field {key!r}")
    return mapping[key]


def load(path: Path = DEFAULT_TOPOLOGY) -> Topology:
    raw = yaml.safe_load(path.read_text())
    zones = tuple(_require(raw, "zones", str(path)))
    instance_types = {
        name: InstanceType(name, str(spec["cpu"]), str(spec["memory"]), int(spec.get("gpu", 0)))
        for name, spec in _require(raw, "instanceTypes", str(path)).items()
    }
    pools = []
    for i, entry in enumerate(_require(raw, "pools", str(path))):
        where = f"{path}: pools[{i}]"
        style = _require(entry, "style", where)
        if style not in STYLES:
            raise TopologyError(f"{where}.style: {style!r} is not one of {', '.join(STYLES)}")
        capacity_type = _require(entry, "capacityType", where)
        if capacity_type not in CAPACITY_TYPES:
            raise TopologyError(f"{where}.capacityType: {capacity_type!r} is not spot or on-demand")
        types = tuple(_require(entry, "instanceTypes", where))
        for t in types:
            if t not in instance_types:
                raise TopologyError(f"{where}.instanceTypes: {t!r} is not declared under instanceTypes")
        pool_zones = tuple(entry.get("zones", zones))
        pools.append(
            Pool(
                name=_require(entry, "name", where),
                style=style,
                capacity_type=capacity_type,
                instance_types=types,
                nodes_per_zone=int(entry.get("nodesPerZone", 1)),
                zones=pool_zones,
            )
        )
    return Topology(_require(raw, "region", str(path)), zones, instance_types, tuple(pools))


def node_ip(index: int) -> str:
    return f"127.1.{index // 256}.{index % 256}"


def pod_cidr(index: int) -> str:
    # One /24 of loopback per node: KWOK hands pod IPs out of the node's podCIDR, so a test can bind a real
    # server on a simulated pod's IP and anything that connects to a pod stays on this machine.
    return f"127.{16 + index // 256}.{index % 256}.0/24"


def _provider_labels(pool: Pool, spot: bool) -> dict[str, str]:
    if pool.style == "karpenter":
        return {"karpenter.sh/nodepool": pool.name, "karpenter.sh/capacity-type": pool.capacity_type}
    if pool.style == "eks-managed":
        return {
            "eks.amazonaws.com/nodegroup": pool.name,
            "eks.amazonaws.com/capacityType": "SPOT" if spot else "ON_DEMAND",
        }
    if pool.style == "gke":
        labels = {"cloud.google.com/gke-nodepool": pool.name}
        if spot:
            labels |= {"cloud.google.com/gke-spot": "true", "cloud.google.com/gke-provisioning": "spot"}
        return labels
    labels = {"kubernetes.azure.com/agentpool": pool.name, "kubernetes.azure.com/mode": "user"}
    if spot:
        labels["kubernetes.azure.com/scalesetpriority"] = "spot"
    return labels


def _provider_id(pool: Pool, zone: str, name: str, index: int) -> str:
    if pool.style in ("karpenter", "eks-managed"):
        return f"aws:///{zone}/i-{index:08x}{secrets.token_hex(4)}"
    if pool.style == "gke":
        return f"gce://spotrain-dev/{zone}/{name}"
    return (
        "azure:///subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/mc_spotrain_dev/providers/"
        f"Microsoft.Compute/virtualMachineScaleSets/aks-{pool.name}-vmss/virtualMachines/{index}"
    )


def node_manifest(
    topology: Topology, pool: Pool, zone: str, instance_type: str, name: str, index: int
) -> dict[str, Any]:
    spot = pool.capacity_type == "spot"
    itype = topology.instance_types[instance_type]
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/region": topology.region,
        "topology.kubernetes.io/zone": zone,
        "node.kubernetes.io/instance-type": instance_type,
        POOL_LABEL: pool.name,
        **_provider_labels(pool, spot),
    }
    taints = []
    if pool.style == "aks" and spot:
        taints.append({"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"})
    resources = {"cpu": itype.cpu, "memory": itype.memory, "pods": "110", "ephemeral-storage": "100Gi"}
    if itype.gpu:
        resources["nvidia.com/gpu"] = str(itype.gpu)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: "fake", INDEX_ANNOTATION: str(index)},
        },
        "spec": {
            "providerID": _provider_id(pool, zone, name, index),
            "podCIDR": pod_cidr(index),
            "podCIDRs": [pod_cidr(index)],
            "taints": taints,
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "addresses": [
                {"type": "InternalIP", "address": node_ip(index)},
                {"type": "Hostname", "address": name},
            ],
        },
    }
