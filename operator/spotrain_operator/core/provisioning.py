"""Capacity that an autoscaler makes on demand, and room on the nodes that exist: pure views for placement.

- ``NodePoolView``: a Karpenter NodePool (karpenter.sh/v1) as placement needs it: the zones, capacity types and
  instance types its requirements allow, and whether its ``limits`` leave room for another node.
- ``NodeRoom``: a node's allocatable resources minus the requests of every pod bound to it (any job, any owner),
  so that two jobs, or a job and a big pod, are never placed on the same full node.
- Manifests that protect a job from voluntary disruption: the rendezvous pod's PodDisruptionBudget, and the
  annotations Karpenter and cluster-autoscaler honour.
- ``karpenter_cannot_serve``: what Karpenter reports when it will not provision a node for a pending pod, read from
  the Events it writes on the pod, so that the worker is re-placed at once rather than after its pool's
  provisioning timeout.

Quantities are parsed with the Kubernetes client's ``parse_quantity`` (the API's own suffix rules).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubernetes.utils.quantity import parse_quantity

from spotrain_operator import wellknown as wk
from spotrain_operator.core.model import parse_time

if TYPE_CHECKING:  # placement and pods import this module
    from spotrain_operator.core.placement import Choice
    from spotrain_operator.core.pods import JobRef

Resources = Mapping[str, Decimal]
NODEPOOL_LABEL = wk.KARPENTER_NODEPOOL
_LONG_AGO = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)  # Ready, since a time nobody recorded


def _quantities(values: Mapping[str, Any] | None) -> dict[str, Decimal]:
    return {k: parse_quantity(v) for k, v in (values or {}).items()}


def _add(total: dict[str, Decimal], more: Resources) -> None:
    for k, v in more.items():
        total[k] = total.get(k, Decimal(0)) + v


def pod_requests(pod_spec: Mapping[str, Any]) -> dict[str, Decimal]:
    """What the scheduler reserves for a pod: the sum of its containers' requests (a limit alone counts as the
    request, as the API server defaults it), at least the largest init container's, plus the pod overhead."""

    def container(c: Mapping[str, Any]) -> dict[str, Decimal]:
        resources = c.get("resources") or {}
        return {**_quantities(resources.get("limits")), **_quantities(resources.get("requests"))}

    total: dict[str, Decimal] = {}
    for c in pod_spec.get("containers") or []:
        _add(total, container(c))
    for c in pod_spec.get("initContainers") or []:
        for k, v in container(c).items():
            total[k] = max(total.get(k, Decimal(0)), v)
    _add(total, _quantities(pod_spec.get("overhead")))
    return total


@dataclass(frozen=True)
class NodeRoom:
    """A node's allocatable resources and what the pods bound to it already request."""

    allocatable: Resources
    requested: Resources = field(default_factory=dict)
    pods: int = 0

    def fits(self, request: Resources) -> bool:
        if "pods" in self.allocatable and self.pods + 1 > self.allocatable["pods"]:
            return False
        return all(v <= 0 or self.allocatable.get(k, Decimal(0)) - self.requested.get(k, Decimal(0)) >= v
                   for k, v in request.items())

    @classmethod
    def of(cls, allocatable: Mapping[str, Any], pod_requests_on_node: Iterable[Resources]) -> NodeRoom:
        requested: dict[str, Decimal] = {}
        count = 0
        for r in pod_requests_on_node:
            _add(requested, r)
            count += 1
        return cls(_quantities(allocatable), requested, count)


def bound_pod_requests(body: Mapping[str, Any]) -> tuple[str, dict[str, Decimal]] | None:
    """(node, requests) of a pod that holds resources on a node: bound and not finished (the scheduler frees
    the resources of Succeeded and Failed pods)."""
    spec = body.get("spec") or {}
    node = spec.get("nodeName")
    phase = (body.get("status") or {}).get("phase")
    if not node or phase in ("Succeeded", "Failed"):
        return None
    return node, pod_requests(spec)


def _requirement_values(requirements: Sequence[Mapping[str, Any]], key: str) -> tuple[str, ...] | None:
    """The values a NodePool allows for a label: None when unconstrained. Only ``In`` narrows here; other
    operators (NotIn, Exists, Gt) leave the choice to Karpenter."""
    for r in requirements:
        if r.get("key") == key and r.get("operator") == "In":
            return tuple(r.get("values") or ())
    return None


@dataclass(frozen=True)
class NodePoolView:
    name: str
    zones: tuple[str, ...] | None = None  # None: no zone requirement
    capacity_types: tuple[str, ...] | None = None
    instance_types: tuple[str, ...] | None = None
    limits: Resources = field(default_factory=dict)
    usage: Resources = field(default_factory=dict)  # status.resources: what its nodes hold now
    deleting: bool = False
    ready_since: datetime.datetime | None = None  # its Ready condition's lastTransitionTime; None: not Ready

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodePoolView:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        requirements = ((spec.get("template") or {}).get("spec") or {}).get("requirements") or []
        conditions = (body.get("status") or {}).get("conditions") or []
        ready = next((c for c in conditions if isinstance(c, Mapping) and c.get("type") == "Ready"), {})
        return cls(
            name=meta["name"],
            zones=_requirement_values(requirements, wk.ZONE),
            capacity_types=_requirement_values(requirements, wk.KARPENTER_CAPACITY_TYPE),
            instance_types=_requirement_values(requirements, wk.INSTANCE_TYPE),
            limits=_quantities(spec.get("limits")),
            usage=_quantities((body.get("status") or {}).get("resources")),
            deleting=bool(meta.get("deletionTimestamp")),
            ready_since=(parse_time(ready.get("lastTransitionTime")) or _LONG_AGO) if ready.get("status") == "True"
            else None,
        )

    def can_launch(self, capacity_type: str, node_selector: Mapping[str, str], request: Resources) -> bool:
        """Whether Karpenter could launch a node for a pod with this selector and request: the NodePool allows
        the capacity type and instance type, and its limits leave at least the pod's request. Karpenter launches
        nothing once usage exceeds a limit and skips instance types larger than what is left
        (pkg/apis/v1/nodepool.go Limits.ExceededBy; the provisioner's remaining-resources filter); the node's
        size is Karpenter's choice, so a remainder above the request but below every instance type's capacity is
        learnt from Karpenter itself (``karpenter_cannot_serve``)."""
        if self.deleting:
            return False
        if self.capacity_types is not None and capacity_type not in self.capacity_types:
            return False
        instance_type = node_selector.get(wk.INSTANCE_TYPE)
        if instance_type and self.instance_types is not None and instance_type not in self.instance_types:
            return False
        for resource, limit in self.limits.items():
            remaining = limit - self.usage.get(resource, Decimal(0))
            needed = Decimal(1) if resource == "nodes" else request.get(resource, Decimal(0))
            if remaining <= 0 or remaining < needed:
                return False
        return True


def node_pool_of(node_selector: Mapping[str, str], node_pools: Mapping[str, NodePoolView]) -> NodePoolView | None:
    name = node_selector.get(NODEPOOL_LABEL)
    return node_pools.get(name) if name else None


# -- what the autoscaler says it cannot serve ------------------------------------------------------------------
#
# Karpenter v1.13 (sigs.k8s.io/karpenter) tells of a pod it will not provision for in one place: a Warning Event
# on the pod, reason FailedScheduling, source component "karpenter" (pkg/operator/operator.go:248 records as
# AppName "karpenter"), message "Failed to schedule pod, <errors>" (pkg/controllers/provisioning/scheduling/
# events.go:64 PodFailedToScheduleEvent), published for every pod its scheduling simulation could fit on no
# existing, in-flight or new node, that is, with no scale-up (scheduler.go:247 Results.Record; provisioner.go:189
# for pods it ignores). The errors are one per NodePool, joined by "; " (multierr). Those of a NodePool reaching
# its limits name it: "node limits have been exhausted for nodepool (NodePool=NAME)" and "all available instance
# types exceed limits for nodepool (NodePool=NAME)" (scheduler.go:625 and :630, serrors.Wrap); those of a NodePool
# with no instance type or offering left for the pod print the NodeClaim's requirements, which hold
# "karpenter.sh/nodepool In [NAME]" (nodeclaim.go:364-398, InstanceTypeFilterError; nodeclaimtemplate.go:71). A
# launch that fails for insufficient capacity deletes the NodeClaim and writes InsufficientCapacityError on the
# NodeClaim, not the pod (pkg/controllers/nodeclaim/lifecycle/launch.go:85); the pod is pending again, and the
# next simulation reports it as above, "no instance type has the required offering", since the cloud provider
# leaves that offering out for a while (karpenter-provider-aws pkg/cache/unavailableofferings.go: 3 minutes). The
# KWOK provider never fails a launch (every offering is available), so on the devcluster a limit is the refusal
# that can be produced; NoCompatibleInstanceTypes is an Event on the NodePool, not the pod. A NodePool
# that is not Ready is left out of the simulation (provisioner.go:252), so its pods are reported as incompatible
# with the others: such a report is not taken for an answer until the NodePool is Ready. Karpenter writes the
# Event once per pod for 5 minutes (DedupeTimeout): a report set aside that way leaves the pod to its provisioning
# timeout, the answer for every pool whose autoscaler says nothing.

FAILED_SCHEDULING = "FailedScheduling"
KARPENTER_COMPONENT = "karpenter"
KARPENTER_EVENTS_SELECTOR = f"reason={FAILED_SCHEDULING},source={KARPENTER_COMPONENT}"  # core/v1 Event fields
_KARPENTER_PREFIX = "Failed to schedule pod, "
_REASON_CHARS = 300


def _event_time(event: Mapping[str, Any]) -> datetime.datetime | None:
    times = [t for k in ("lastTimestamp", "eventTime", "firstTimestamp") if (t := parse_time(event.get(k)))]
    return max(times, default=None)


def karpenter_cannot_serve(event: Mapping[str, Any], node_pool: NodePoolView) -> str | None:
    """Why Karpenter will not provision a node for a pod of ``node_pool``, from an Event written on that pod; None
    when the event says nothing of the kind (another reason or reporter, a NodePool not Ready when it was written).
    The reason is Karpenter's own words, those about this NodePool first (others only say it is not theirs)."""
    if not isinstance(event, Mapping) or event.get("reason") != FAILED_SCHEDULING:
        return None
    source = event.get("source")
    component = (source.get("component") if isinstance(source, Mapping) else None) or event.get("reportingComponent")
    if component != KARPENTER_COMPONENT or node_pool.ready_since is None:
        return None
    written = _event_time(event)
    if written is None or written <= node_pool.ready_since:  # both to the second: the same second is not after
        return None
    message = str(event.get("message") or "").removeprefix(_KARPENTER_PREFIX).strip()
    errors = [e.strip() for e in message.split("; ") if e.strip()]
    named = [e for e in errors if f"NodePool={node_pool.name})" in e
             or (f"{NODEPOOL_LABEL} In [{node_pool.name}]" in e and f"key {NODEPOOL_LABEL}," not in e)]
    not_others = [e for e in errors if f"key {NODEPOOL_LABEL}," not in e]
    reason = "; ".join(named or not_others[:1] or errors[:1]) or "no reason given"
    return reason[:_REASON_CHARS]


def pods_karpenter_cannot_serve(events: Iterable[Mapping[str, Any]],
                                waiting: Mapping[str, NodePoolView]) -> dict[str, str]:
    """Pod name -> why Karpenter cannot serve it, for the pending pods in ``waiting`` (name -> the NodePool its pool
    selects), from the Events of their namespace."""
    found: dict[str, str] = {}
    for event in events:
        involved = event.get("involvedObject") if isinstance(event, Mapping) else None
        if not isinstance(involved, Mapping) or involved.get("kind") != "Pod":
            continue
        name = str(involved.get("name"))
        node_pool = waiting.get(name)
        if node_pool is not None and name not in found and (why := karpenter_cannot_serve(event, node_pool)):
            found[name] = why
    return found


# -- protection from voluntary disruption --------------------------------------------------------------------

def disruption_annotations() -> dict[str, str]:
    """Annotations for workers and the rendezvous pod: consolidation would only restart training elsewhere.
    A disruption the job cannot veto (spot interruption, expiry, drift) still comes as the node's
    karpenter.sh/disrupted taint and goes through the drain."""
    return {wk.KARPENTER_DO_NOT_DISRUPT: "true", wk.CA_SAFE_TO_EVICT: "false"}


def render_rendezvous_pdb(job: JobRef) -> dict[str, Any]:
    """A PodDisruptionBudget that refuses voluntary evictions (kubectl drain, autoscaler scale-down) of the job's
    rendezvous pod: losing the store restarts every worker from the last checkpoint. The operator's own
    evictions of workers are not covered (the selector takes only the rendezvous role)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": job.rendezvous_service, "namespace": job.namespace, "labels": {wk.JOB_LABEL: job.label},
                     "ownerReferences": [job.owner_reference()]},
        "spec": {"maxUnavailable": 0,
                 "selector": {"matchLabels": {wk.JOB_LABEL: job.label, wk.ROLE_LABEL: "rendezvous"}}},
    }


# -- return-to-spot probes ------------------------------------------------------------------------------------

PROBE_ROLE = "probe"
PROBE_IMAGE = "registry.k8s.io/pause:3.10"  # runs nothing; every node already has it as its sandbox image
PROBE_USER = 65535  # the pause image's own user (its Dockerfile: USER 65535:65535), stated so runAsNonRoot holds


def render_probe(job: JobRef, choice: Choice, serial: int, round_: int, node_selector: Mapping[str, str],
                 tolerations: Sequence[Mapping[str, Any]], requests: Resources) -> dict[str, Any]:
    """A pod of a worker's size pinned where a worker would go, that runs nothing and joins no rendezvous: it makes
    the autoscaler provision a spot node without costing the job a restart, and its Running says the node came.

    Named, labelled and owned like the job's other pods (a valid name and label value for any job name), and
    within Pod Security "restricted" like them, so that a namespace that admits the workers admits the probe.
    The template's own labels are left off: a Service or policy selecting them must not take in a pod that
    serves nothing. Limits equal the requests: extended resources (GPUs) must be given as limits, and a
    ResourceQuota over limits refuses pods without them."""
    from spotrain_operator.core.pods import apply_restricted_defaults, dns_label  # pods imports this module

    quantities = {k: str(v) for k, v in requests.items()}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "nodeSelector": {**node_selector, wk.ZONE: choice.zone},
        "tolerations": [dict(t) for t in tolerations],
        "securityContext": {"runAsNonRoot": True, "runAsUser": PROBE_USER, "runAsGroup": PROBE_USER},
        "containers": [{"name": "probe", "image": PROBE_IMAGE,
                        "resources": {"requests": quantities, "limits": dict(quantities)}}],
    }
    apply_restricted_defaults(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": dns_label(job.name, f"-probe-{serial}-g{round_}"),
            "namespace": job.namespace,
            "labels": {wk.JOB_LABEL: job.label, wk.ROLE_LABEL: PROBE_ROLE, wk.ROUND_LABEL: str(round_),
                       wk.POOL_LABEL: choice.pool, wk.SERIAL_LABEL: str(serial)},
            "annotations": {wk.ZONE: choice.zone},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": spec,
    }
