"""The pods and the Service a job is made of, rendered from its spec: pure functions returning manifests."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from spotrain_operator import wellknown as wk
from spotrain_operator.api import JobSpec
from spotrain_operator.core.placement import Choice, pool_tolerations

CONTROL_PORT = 8470
# Kubelet gives a preempted pod this long between SIGTERM and SIGKILL unless the template says otherwise:
# inside AWS's 2-minute notice, with room for the drain to start.
DEFAULT_GRACE_SECONDS = 90
RENDEZVOUS_SUFFIX = "rdzv"


@dataclass(frozen=True)
class JobRef:
    name: str
    namespace: str
    uid: str

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
        return f"{self.name}-{RENDEZVOUS_SUFFIX}"

    def rendezvous_id(self, round_: int) -> str:
        return f"{self.uid[:8]}-g{round_}"

    def rendezvous_endpoint(self, port: int) -> str:
        return f"{self.rendezvous_service}.{self.namespace}.svc:{port}"


def worker_name(job: JobRef, serial: int, round_: int) -> str:
    return f"{job.name}-worker-{serial}-g{round_}"


def rendezvous_pod_name(job: JobRef, round_: int) -> str:
    return f"{job.name}-{RENDEZVOUS_SUFFIX}-g{round_}"


def selector(job: JobRef) -> str:
    return f"{wk.JOB_LABEL}={job.name},{wk.ROLE_LABEL}=worker"


def _labels(job: JobRef, role: str, round_: int, pool: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**(extra or {}), wk.JOB_LABEL: job.name, wk.ROLE_LABEL: role, wk.ROUND_LABEL: str(round_),
            wk.POOL_LABEL: pool}


def _env(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in pairs.items()]


def _downward(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def worker_env(job: JobRef, spec: JobSpec, round_: int, mtbf_seconds: float | None) -> list[dict[str, Any]]:
    """The trainer's contract (spotrain-launch reads these)."""
    ck = spec.checkpoint
    values = {
        "SPOTRAIN_JOB_NAME": job.name,
        "SPOTRAIN_NAMESPACE": job.namespace,
        "SPOTRAIN_RDZV_ENDPOINT": job.rendezvous_endpoint(spec.rendezvous_port),
        "SPOTRAIN_RDZV_ID": job.rendezvous_id(round_),
        "SPOTRAIN_MIN_NODES": str(spec.min_nodes),
        "SPOTRAIN_MAX_NODES": str(spec.max_nodes),
        "SPOTRAIN_NPROC_PER_NODE": str(spec.nproc_per_node),
        "SPOTRAIN_CHECKPOINT_URI": ck.uri,
        "SPOTRAIN_CHECKPOINT_INTERVAL": "auto" if ck.interval == "auto" else str(ck.interval_seconds),
        "SPOTRAIN_CHECKPOINT_MIN_INTERVAL": str(ck.min_interval_seconds),
        "SPOTRAIN_CHECKPOINT_MAX_INTERVAL": str(ck.max_interval_seconds),
        "SPOTRAIN_KEEP_LAST": str(ck.keep_last),
        "SPOTRAIN_CONTROL_PORT": str(CONTROL_PORT),
    }
    if mtbf_seconds:
        values["SPOTRAIN_MTBF_SECONDS"] = f"{mtbf_seconds:.0f}"
    if ck.s3_endpoint_url:
        values["SPOTRAIN_S3_ENDPOINT_URL"] = ck.s3_endpoint_url
    if ck.s3_region:
        values["AWS_DEFAULT_REGION"] = ck.s3_region
    env = [_downward("POD_NAME", "metadata.name"), _downward("POD_IP", "status.podIP"), *_env(values)]
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
            "labelSelector": {"matchLabels": {wk.JOB_LABEL: job.name, wk.ROLE_LABEL: "worker"}},
            "topologyKey": wk.HOSTNAME,
        }
    )
    trainer = pod_spec["containers"][0]
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
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_name(job, serial, round_),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": {**(meta.get("annotations") or {}), wk.ZONE: choice.zone},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": pod_spec,
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
            "annotations": {wk.ZONE: zone or ""},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node_selector,
            "tolerations": pool_tolerations(spec, pool),
            "containers": [
                {
                    "name": "rendezvous",
                    "image": image,
                    "command": ["python", "-m", "spotrain_trainer.rendezvous"],
                    "args": ["--port", str(spec.rendezvous_port)],
                    "ports": [{"name": "c10d", "containerPort": spec.rendezvous_port}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "readinessProbe": {"tcpSocket": {"port": spec.rendezvous_port}, "periodSeconds": 5},
                }
            ],
        },
    }


def render_rendezvous_service(job: JobRef, spec: JobSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.rendezvous_service,
            "namespace": job.namespace,
            "labels": {wk.JOB_LABEL: job.name},
            "ownerReferences": [job.owner_reference()],
        },
        "spec": {
            "selector": {wk.JOB_LABEL: job.name, wk.ROLE_LABEL: "rendezvous"},
            "ports": [{"name": "c10d", "port": spec.rendezvous_port, "targetPort": spec.rendezvous_port}],
            # Agents reconnect to whichever store pod is current; no load balancing is wanted.
            "publishNotReadyAddresses": False,
        },
    }
