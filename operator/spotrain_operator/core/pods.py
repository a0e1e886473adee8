"""The pods, the Service and the Secret a job is made of, rendered from its spec: pure functions returning
manifests.

Names: a job's name is a DNS-1123 subdomain of up to 253 characters (``llama-3.1-ft``, ``7b-run``), but a
Service name must be a DNS-1035 label (a letter first, no dots, at most 63), a label value at most 63 characters,
and a pod's name becomes its hostname (one DNS label). Every name and label value derived from the job name goes
through ``dns_label`` or ``job_label_value``, which keep short plain names as they are and otherwise cut them and
add a hash of the full name, so two jobs never share one.

Pod Security: the rendezvous pod satisfies the "restricted" profile; worker pods get the restricted settings
that cannot break an image (seccomp RuntimeDefault, no privilege escalation, every capability dropped) wherever
their template leaves the field unset; running as non-root is the template's to say (see docs/security.md).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spotrain_operator import wellknown as wk
from spotrain_operator.api import JobSpec
from spotrain_operator.core.placement import Choice, pool_tolerations
from spotrain_operator.core.provisioning import disruption_annotations
from spotrain_protocol import CONTROL_PORT, WorkerEnv, envvars

# Kubelet gives a preempted pod this long between SIGTERM and SIGKILL unless the template says otherwise:
# inside AWS's 2-minute notice, with room for the drain to start.
DEFAULT_GRACE_SECONDS = 90
RENDEZVOUS_SUFFIX = "rdzv"
# The job's control token: the operator puts it in this Secret key, the worker reads it from envvars.CONTROL_TOKEN.
CONTROL_TOKEN_KEY = "token"
# Checkpoints for object stores are staged on local disk before upload, here (WorkerEnv.staging_dir).
STAGING_MOUNT = "/var/spotrain/staging"
LAUNCHER = "spotrain-launch"
# Pod Security "restricted" for the containers spotrain adds, and the defaults it fills into workers.
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
RUNTIME_DEFAULT_SECCOMP = {"type": "RuntimeDefault"}
# The image's non-root user (Dockerfile: USER 65532:65532), stated so that runAsNonRoot can be verified even
# for a rendezvous image whose USER is a name.
RENDEZVOUS_USER = 65532
MAX_LABEL = 63
_HASH_LEN = 8
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LEN]


def dns_label(base: str, suffix: str = "") -> str:
    """``base + suffix`` as a DNS-1035 label (Service names; pod names, which become hostnames): unchanged when it
    already is one, else dots and other characters become ``-``, a leading digit gets a ``j`` and the base is cut
    to fit 63 characters, with a hash of the original base so different bases stay different."""
    name = base + suffix
    if len(name) <= MAX_LABEL and _DNS_1035.fullmatch(name):
        return name
    cleaned = re.sub(r"[^a-z0-9-]", "-", base.lower())
    if not cleaned[:1].isalpha():
        cleaned = "j" + cleaned
    tail = f"-{_short_hash(base)}{suffix}"
    return cleaned[: MAX_LABEL - len(tail)].rstrip("-") + tail


def job_label_value(name: str) -> str:
    """The value of the job label (and selector) for a job: the name itself up to 63 characters, else its first
    54 characters and a hash. The one place this is derived; the operator selects a job's pods with it."""
    if len(name) <= MAX_LABEL:
        return name
    return f"{name[: MAX_LABEL - _HASH_LEN - 1].rstrip('-.')}-{_short_hash(name)}"


def owning_job(meta: Mapping[str, Any]) -> str | None:
    """The name of the SpotTrainingJob controlling an object (from its owner reference): a long job name is only
    hashed in the job label, never in the owner reference."""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("kind") == wk.KIND and ref.get("controller"):
            return str(ref["name"])
    return None


@dataclass(frozen=True)
class JobRef:
    name: str
    namespace: str
    uid: str
    # The job's control-endpoint token (control_auth.ControlKey.token_for); None: the operator runs without one.
    control_token: str | None = field(default=None, repr=False)

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{wk.GROUP}/{wk.VERSION}",
            "kind": wk.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    @property
    def rendezvous_service(self) -> str:
        return dns_label(self.name, f"-{RENDEZVOUS_SUFFIX}")

    @property
    def label(self) -> str:
        return job_label_value(self.name)

    @property
    def control_secret(self) -> str:
        # The uid in the name: a Secret left by an earlier job of the same name (not yet collected) never
        # hands its token to this one.
        return dns_label(self.name, f"-control-{self.uid[:8]}")

    def rendezvous_id(self, round_: int) -> str:
        return f"{self.uid[:8]}-g{round_}"

    def rendezvous_endpoint(self, port: int) -> str:
        return f"{self.rendezvous_service}.{self.namespace}.svc:{port}"


def worker_name(job: JobRef, serial: int, round_: int) -> str:
    return dns_label(job.name, f"-worker-{serial}-g{round_}")


def rendezvous_pod_name(job: JobRef, round_: int) -> str:
    return dns_label(job.name, f"-{RENDEZVOUS_SUFFIX}-g{round_}")


def selector(job: JobRef) -> str:
    return f"{wk.JOB_LABEL}={job.label},{wk.ROLE_LABEL}=worker"


def _labels(job: JobRef, role: str, round_: int, pool: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**(extra or {}), wk.JOB_LABEL: job.label, wk.ROLE_LABEL: role, wk.ROUND_LABEL: str(round_),
            wk.POOL_LABEL: pool}


def _env(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in pairs.items()]


def _downward(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def worker_env(job: JobRef, spec: JobSpec, round_: int, mtbf_seconds: float | None) -> list[dict[str, Any]]:
    """The trainer's contract (spotrain_protocol.WorkerEnv; spotrain-launch reads these)."""
    ck = spec.checkpoint
    values = WorkerEnv(
        job_name=job.name,
        namespace=job.namespace,
        rdzv_endpoint=job.rendezvous_endpoint(spec.rendezvous_port),
        rdzv_id=job.rendezvous_id(round_),
        min_nodes=spec.min_nodes,
        max_nodes=spec.max_nodes,
        nproc_per_node=spec.nproc_per_node,
        checkpoint_uri=ck.uri,
        checkpoint_interval=envvars.AUTO if ck.interval == envvars.AUTO else ck.interval_seconds,
        checkpoint_min_interval=ck.min_interval_seconds,
        checkpoint_max_interval=ck.max_interval_seconds,
        keep_last=ck.keep_last,
        control_port=CONTROL_PORT,
        mtbf_seconds=round(mtbf_seconds) if mtbf_seconds else None,
        s3_endpoint_url=ck.s3_endpoint_url or None,
        staging_dir=STAGING_MOUNT if ck.uri.startswith("s3://") else None,
    ).to_env()
    if ck.s3_region:
        values["AWS_DEFAULT_REGION"] = ck.s3_region
    env = [_downward("POD_NAME", "metadata.name"), _downward("POD_IP", "status.podIP"), *_env(values)]
    if job.control_token:
        # An env var, not a mounted file: the devcluster's pod runner resolves secretKeyRef but mounts nothing.
        env.append({"name": envvars.CONTROL_TOKEN,
                    "valueFrom": {"secretKeyRef": {"name": job.control_secret, "key": CONTROL_TOKEN_KEY}}})
    if ck.credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": ck.credentials_secret, "key": key}}})
    return env


def render_worker(
    job: JobRef, spec: JobSpec, choice: Choice, serial: int, round_: int, mtbf_seconds: float | None
) -> dict[str, Any]:
    template = copy.deepcopy(spec.template)
    meta = template.get("metadata") or {}
    pod_spec: dict[str, Any] = template["spec"]
    pool = spec.pool(choice.pool)
    labels = _labels(job, "worker", round_, pool.name, meta.get("labels"))
    labels[wk.SERIAL_LABEL] = str(serial)
    pod_spec["restartPolicy"] = "Never"
    pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), **pool.node_selector, wk.ZONE: choice.zone}
    pod_spec["tolerations"] = pool_tolerations(spec, pool)
    pod_spec.setdefault("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    # One worker per node: a node lost then takes exactly one rank group with it.
    affinity = pod_spec.setdefault("affinity", {})
    anti = affinity.setdefault("podAntiAffinity", {})
    anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(
        {
            "labelSelector": {"matchLabels": {wk.JOB_LABEL: job.label, wk.ROLE_LABEL: "worker"}},
            "topologyKey": wk.HOSTNAME,
        }
    )
    apply_restricted_defaults(pod_spec)
    trainer = pod_spec["containers"][0]
    # The image's entry point may be anything; the trainer's contract is spotrain-launch. A template that sets
    # its own command keeps it (it must then run spotrain-launch itself, see docs/security.md).
    trainer.setdefault("command", [LAUNCHER])
    trainer["env"] = [*worker_env(job, spec, round_, mtbf_seconds), *(trainer.get("env") or [])]
    ports = trainer.setdefault("ports", [])
    if not any(p.get("containerPort") == CONTROL_PORT for p in ports):
        ports.append({"name": "spotrain-ctl", "containerPort": CONTROL_PORT})
    if spec.checkpoint.volume_claim:
        pod_spec.setdefault("volumes", []).append(
            {"name": "spotrain-checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoint.volume_claim}}
        )
        trainer.setdefault("volumeMounts", []).append(
            {"name": "spotrain-checkpoints", "mountPath": spec.checkpoint.uri}
        )
    if spec.checkpoint.uri.startswith("s3://"):
        # Staged shards must not fill the container's writable layer (and survive a read-only root filesystem).
        staging = {"sizeLimit": spec.checkpoint.staging_size_limit} if spec.checkpoint.staging_size_limit else {}
        pod_spec.setdefault("volumes", []).append({"name": "spotrain-staging", "emptyDir": staging})
        trainer.setdefault("volumeMounts", []).append({"name": "spotrain-staging", "mountPath": STAGING_MOUNT})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_name(job, serial, round_),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": {**(meta.get("annotations") or {}), wk.ZONE: choice.zone, **disruption_annotations()},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": pod_spec,
    }


def apply_restricted_defaults(pod_spec: dict[str, Any]) -> None:
    """Pod Security "restricted" settings wherever the template leaves them unset and they cannot change what an
    image does: seccomp RuntimeDefault, no privilege escalation, all capabilities dropped. A template that sets
    any of them (a capability it needs, a privileged container) keeps its own."""
    pod_security = pod_spec.setdefault("securityContext", {})
    containers = [*(pod_spec.get("initContainers") or []), *pod_spec["containers"]]
    if "seccompProfile" not in pod_security and not any(
            "seccompProfile" in (c.get("securityContext") or {}) for c in containers):
        pod_security["seccompProfile"] = dict(RUNTIME_DEFAULT_SECCOMP)
    for container in containers:
        security = container.setdefault("securityContext", {})
        if security.get("privileged"):
            continue
        security.setdefault("allowPrivilegeEscalation", False)
        security.setdefault("capabilities", {"drop": ["ALL"]})


def render_control_secret(job: JobRef) -> dict[str, Any]:
    """The Secret the job's workers read their control token from; owned by the job, so it goes with it."""
    if not job.control_token:
        raise ValueError("the job has no control token")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": job.control_secret,
            "namespace": job.namespace,
            "labels": {wk.JOB_LABEL: job.label},
            "ownerReferences": [job.owner_reference()],
        },
        "stringData": {CONTROL_TOKEN_KEY: job.control_token},
    }


def render_rendezvous(job: JobRef, spec: JobSpec, zone: str | None, round_: int) -> dict[str, Any]:
    pool = spec.pool(spec.rendezvous_pool_name)
    node_selector = dict(pool.node_selector)
    if zone:
        node_selector[wk.ZONE] = zone
    image = spec.rendezvous_image or spec.trainer_image
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": rendezvous_pod_name(job, round_),
            "namespace": job.namespace,
            "labels": _labels(job, "rendezvous", round_, pool.name),
            "annotations": {wk.ZONE: zone or "", **disruption_annotations()},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node_selector,
            "tolerations": pool_tolerations(spec, pool),
            # The store needs no API access.
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RENDEZVOUS_USER,
                "runAsGroup": RENDEZVOUS_USER,
                "seccompProfile": dict(RUNTIME_DEFAULT_SECCOMP),
            },
            "containers": [
                {
                    "name": "rendezvous",
                    "image": image,
                    "command": ["python", "-m", "spotrain_trainer.rendezvous"],
                    "args": ["--port", str(spec.rendezvous_port)],
                    "ports": [{"name": "c10d", "containerPort": spec.rendezvous_port}],
                    # Limits too: a namespace whose ResourceQuota covers limits refuses pods without them.
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                  "limits": {"cpu": "1", "memory": "512Mi"}},
                    "readinessProbe": {"tcpSocket": {"port": spec.rendezvous_port}, "periodSeconds": 5},
                    "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
                }
            ],
        },
    }


def render_rendezvous_service(job: JobRef, spec: JobSpec, round_: int) -> dict[str, Any]:
    """The Service in front of the current round's store. It selects that round's store pod alone: while a store
    moves, the old round's pod still serves the old agents, and a Service over both would split the rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.rendezvous_service,
            "namespace": job.namespace,
            "labels": {wk.JOB_LABEL: job.label},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": {
            "selector": {wk.JOB_LABEL: job.label, wk.ROLE_LABEL: "rendezvous", wk.ROUND_LABEL: str(round_)},
            "ports": [{"name": "c10d", "port": spec.rendezvous_port, "targetPort": spec.rendezvous_port}],
            # Agents reconnect to whichever store pod is current; no load balancing is wanted.
            "publishNotReadyAddresses": False,
        },
    }
