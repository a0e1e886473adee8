"""Karpenter with its KWOK cloud provider, run against the devcluster: a real autoscaler for pools that start
from zero nodes.

The binary is Karpenter's own ``kwok`` main package (sigs.k8s.io/karpenter, built by dev/testbin/build.sh next to
the CRDs it ships). Its cloud provider creates Node objects annotated ``kwok.x-k8s.io/node: fake``, the annotation
the devcluster's KWOK manages (``topology.KWOK_ANNOTATION``), so the nodes Karpenter launches turn Ready and run
pods like the pre-provisioned ones. Instance types come from dev/karpenter/instance-types.json: every offering
is forced available by the provider (kwok/cloudprovider/helpers.go, setDefaultOptions), so "capacity runs out"
is made with NodePool ``limits``.

Started only by what needs it (the autoscaling tests' module fixture): the rest of the suite does not pay for it.
``start()`` also applies dev/karpenter/nodepools.yaml: the NodePools examples/eks-karpenter.yaml names, and
``spot`` and ``on-demand`` with CPU limits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from spotrain_dev import processes, testbin
from spotrain_dev.cluster import REPO, DevCluster, _http_ok
from spotrain_dev.processes import ManagedProcess
from spotrain_dev.timestamps import rfc3339, utc_now

KARPENTER_DIR = REPO / "dev" / "karpenter"
INSTANCE_TYPES = KARPENTER_DIR / "instance-types.json"
NODE_CLASS = KARPENTER_DIR / "nodeclass.yaml"
NODE_POOLS = KARPENTER_DIR / "nodepools.yaml"
NODE_CLASS_NAME = "default"
VERSIONS = REPO / "dev" / "testbin" / "versions.env"


def version() -> str:
    match = re.search(r"^KARPENTER_VERSION=(\S+)", VERSIONS.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"{VERSIONS} names no KARPENTER_VERSION")
    return match.group(1)


def crd_dir() -> Path:
    """The CRDs of the Karpenter version in use, copied out of its module by build.sh."""
    return testbin.bin_dir().parent / f"karpenter-crds-{version()}"


@dataclass
class Karpenter:
    cluster: DevCluster
    # Faster than Karpenter's defaults (1 s idle, 10 s max): a test's pending workers become NodeClaims promptly.
    batch_idle: str = "300ms"
    batch_max: str = "2s"
    process: ManagedProcess | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, node_pools: Path | None = NODE_POOLS) -> None:
        bins = testbin.ensure(self.cluster.progress)
        self.cluster.progress(f"starting karpenter {version()} (KWOK provider)")
        self.cluster.apply(crd_dir())
        self.cluster.kubectl("apply", "--server-side", "-f", str(NODE_CLASS))
        self._mark_node_class_ready()
        # Off the operator's 8080/8081 (and anything else): a port chosen free now.
        self.ports = {"metrics": processes.free_port(), "health": processes.free_port()}
        self.process = processes.start(
            "karpenter",
            [bins / "karpenter-kwok"],
            self.cluster.logs,
            env={
                "KUBECONFIG": str(self.cluster.kubeconfig),
                "INSTANCE_TYPES_FILE_PATH": str(INSTANCE_TYPES),
                "METRICS_PORT": str(self.ports["metrics"]),
                "HEALTH_PROBE_PORT": str(self.ports["health"]),
                # One replica out of cluster: no Lease to wait for. LEADER_ELECTION_NAMESPACE is what it would need.
                "DISABLE_LEADER_ELECTION": "true",
                "LEADER_ELECTION_NAMESPACE": "kube-system",
                "BATCH_IDLE_DURATION": self.batch_idle,
                "BATCH_MAX_DURATION": self.batch_max,
                "LOG_LEVEL": "info",
                "CPU_REQUESTS": "1000",
            },
        )
        processes.wait_until(
            "karpenter /readyz",
            lambda: _http_ok(f"http://127.0.0.1:{self.ports['health']}/readyz"),
            [*self.cluster.processes, self.process],
            120,
        )
        if node_pools is not None:
            self.cluster.kubectl("apply", "--server-side", "-f", str(node_pools))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _mark_node_class_ready(self) -> None:
        now = rfc3339(utc_now())
        condition = {"type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": now,
                     "observedGeneration": 1}
        self.cluster.kubectl("patch", "kwoknodeclass", NODE_CLASS_NAME, "--subresource=status", "--type=merge",
                             "-p", json.dumps({"status": {"conditions": [condition]}}))

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else ""


def node_pool(name: str, capacity_type: str, zones: list[str], instance_types: list[str],
              limits: dict[str, str] | None = None, labels: dict[str, str] | None = None,
              consolidate_after: str = "Never") -> dict[str, object]:
    """A NodePool manifest on the devcluster's KWOK node class."""
    spec: dict[str, object] = {
        "template": {
            "metadata": {"labels": labels or {}},
            "spec": {
                "nodeClassRef": {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": NODE_CLASS_NAME},
                "expireAfter": "Never",
                "requirements": [
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": [capacity_type]},
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": instance_types},
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": zones},
                ],
            },
        },
        "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": consolidate_after},
    }
    if limits is not None:
        spec["limits"] = limits
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name}, "spec": spec}
