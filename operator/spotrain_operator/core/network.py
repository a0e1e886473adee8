"""Each job's NetworkPolicy, rendered from the job and the operator's settings: a pure function returning a
manifest.

The policy selects the job's pods (workers, the rendezvous store, return-to-spot probes: everything that carries
the job label) and lets in only
  - the pods of the same job, on any port: the c10d rendezvous store, collectives between workers;
  - on the control port, the operator's own pods (its namespace and pod labels) and the peers the operator is
    given (e.g. the Prometheus that scrapes the workers' /metrics).
NetworkPolicies add up (a pod admits what any policy selecting it admits), so a namespace-wide "spotrain pods
reach spotrain pods" policy next to these would undo them: the chart makes none when the operator makes these.

The rendered spec's hash rides on the policy as an annotation; the operator compares it with the hash of what it
would render now, so a policy that is current costs no API call, and one deleted or edited by hand is put back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spotrain_operator import wellknown as wk
from spotrain_operator.core.pods import CONTROL_PORT, JobRef, dns_label

SPEC_HASH_ANNOTATION = "spotrain.dev/spec-hash"
POLICY_SUFFIX = "-spotrain"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every Namespace by the API server (1.22+)
# The fields of a NetworkPolicyPeer (networking.k8s.io/v1).
PEER_FIELDS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


@dataclass(frozen=True)
class NetworkPolicyConfig:
    """Who may reach a job's control port besides the job's own pods: the operator's pods, found by their namespace
    and labels, and extra NetworkPolicyPeers."""

    operator_namespace: str
    operator_labels: Mapping[str, str]
    control_peers: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def parse(cls, operator_namespace: str | None, operator_labels: str | None,
              control_peers: str | None) -> NetworkPolicyConfig:
        """The operator's flags (JSON for the labels and the peers); a ValueError names the flag and the fix."""
        if not operator_namespace:
            raise ValueError("--network-policy-operator-namespace: empty; give the operator's namespace "
                             "(the chart passes the release namespace; in a pod, POD_NAMESPACE sets it)")
        labels = _json("--network-policy-operator-labels", operator_labels or "")
        if not isinstance(labels, dict) or not labels or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ValueError("--network-policy-operator-labels: give the operator pods' labels as a non-empty "
                             'JSON object of strings, e.g. {"app.kubernetes.io/name": "spotrain"}')
        peers = _json("--network-policy-control-from", control_peers or "[]")
        if not isinstance(peers, list) or not all(
                isinstance(p, dict) and p and set(p) <= PEER_FIELDS for p in peers):
            raise ValueError("--network-policy-control-from: give a JSON list of NetworkPolicyPeers, each an "
                             f"object with some of {', '.join(sorted(PEER_FIELDS))}")
        return cls(operator_namespace, labels, tuple(peers))


def _json(flag: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{flag}: not JSON ({e})") from e


def policy_name(job: JobRef) -> str:
    return dns_label(job.name, POLICY_SUFFIX)


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def render_network_policy(job: JobRef, config: NetworkPolicyConfig) -> dict[str, Any]:
    job_pods = {"matchLabels": {wk.JOB_LABEL: job.label}}
    operator: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: config.operator_namespace}},
        "podSelector": {"matchLabels": dict(config.operator_labels)},
    }
    control_from: Sequence[Mapping[str, Any]] = [operator, *config.control_peers]
    spec = {
        "podSelector": job_pods,
        "policyTypes": ["Ingress"],
        "ingress": [
            # No namespaceSelector: a podSelector alone means pods of the policy's (the job's) namespace.
            {"from": [{"podSelector": job_pods}]},
            {"from": [dict(p) for p in control_from], "ports": [{"port": CONTROL_PORT, "protocol": "TCP"}]},
        ],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(job),
            "namespace": job.namespace,
            "labels": {wk.JOB_LABEL: job.label},
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(spec)},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": spec,
    }
