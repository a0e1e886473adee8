"""The few Kubernetes calls the controllers make. Every call tolerates the state it wants already being there
(409 on create, 404 on delete), so applying a decision twice is harmless."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from spotrain_operator import wellknown as wk
from spotrain_operator.core.pods import job_label_value

log = logging.getLogger("spotrain.cluster")
# (connect, read) seconds: a call must never hang a job's reconcile loop on a half-dead connection.
TIMEOUT = (5.0, 30.0)
# The client builds its models from an answer slowly (tens of ms for a pod under load); calls whose answer is not
# used, or is read as plain JSON, take it raw.
RAW = {"_request_timeout": TIMEOUT, "_preload_content": False}


class Cluster:
    def __init__(self, api_client: client.ApiClient):
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            job: dict[str, Any] = self.custom.get_namespaced_custom_object(
                wk.GROUP, wk.VERSION, namespace, wk.PLURAL, name, _request_timeout=TIMEOUT)
            return job
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_job_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        # Plain JSON, not V1Pod models flattened again: on the path from a notice to the checkpoint request that
        # conversion cost ten times the request itself.
        selector = f"{wk.JOB_LABEL}={job_label_value(name)}"
        response = self.core.list_namespaced_pod(namespace, label_selector=selector, **RAW)
        pods: list[dict[str, Any]] = json.loads(response.data)["items"]
        return pods

    def list_events(self, namespace: str, field_selector: str) -> list[dict[str, Any]]:
        """core/v1 Events of a namespace, narrowed by the API server (reason, source, involvedObject.* fields)."""
        response = self.core.list_namespaced_event(namespace, field_selector=field_selector, **RAW)
        events: list[dict[str, Any]] = json.loads(response.data)["items"]
        return events

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return dict(self.core.read_namespaced_config_map(name, namespace, _request_timeout=TIMEOUT).data or {})
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            response = self.core.read_node(name, **RAW)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        node: dict[str, Any] = json.loads(response.data)
        return node

    def spotrain_pods_on_node(self, node: str) -> list[str]:
        """Pods of any spotrain job still holding ``node`` (not finished), as namespace/name."""
        response = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}",
                                                         label_selector=wk.JOB_LABEL, **RAW)
        return [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in json.loads(response.data)["items"]
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]

    def create(self, manifest: dict[str, Any]) -> bool:
        namespace = manifest["metadata"]["namespace"]
        try:
            if manifest["kind"] == "Pod":
                _drop(self.core.create_namespaced_pod(namespace, manifest, **RAW))
            elif manifest["kind"] == "PodDisruptionBudget":  # the rendezvous pod's (provisioning.render_rendezvous_pdb)
                _drop(self.policy.create_namespaced_pod_disruption_budget(namespace, manifest, **RAW))
            elif manifest["kind"] == "Secret":  # the job's control token (pods.render_control_secret)
                _drop(self.core.create_namespaced_secret(namespace, manifest, **RAW))
            elif manifest["kind"] == "NetworkPolicy":  # the job's (network.render_network_policy)
                _drop(self.networking.create_namespaced_network_policy(namespace, manifest, **RAW))
            else:
                _drop(self.core.create_namespaced_service(namespace, manifest, **RAW))
            return True
        except ApiException as e:
            if e.status != 409:
                raise
        if manifest["kind"] == "Service":
            # The rendezvous Service follows the current round: its selector moves with the store.
            patch = {"spec": {"selector": manifest["spec"]["selector"]}}
            _drop(self.core.patch_namespaced_service(manifest["metadata"]["name"], namespace, patch, **RAW))
        elif manifest["kind"] == "NetworkPolicy":
            # Out of date (the operator's settings changed) or edited by hand: the spec and its hash as rendered. A
            # strategic merge patch replaces the ingress list whole (it has no merge key).
            patch = {"metadata": {"annotations": manifest["metadata"]["annotations"]}, "spec": manifest["spec"]}
            _drop(self.networking.patch_namespaced_network_policy(manifest["metadata"]["name"], namespace, patch,
                                                                  **RAW))
        return False

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None, reason: str | None = None) -> None:
        """Deletes a pod; ``reason`` is written on it first (deletion-reason annotation), so whoever looks at the
        terminating pod, the operator after a restart included, knows the operator removed it and why."""
        try:
            if reason:
                patch = {"metadata": {"annotations": {wk.DELETION_REASON_ANNOTATION: reason[:256]}}}
                _drop(self.core.patch_namespaced_pod(name, namespace, patch, **RAW))
            _drop(self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds, **RAW))
        except ApiException as e:
            if e.status != 404:
                raise

    def label_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        try:
            _drop(self.core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": labels}}, **RAW))
        except ApiException as e:
            if e.status != 404:
                raise

    def evict_pod(self, namespace: str, name: str, grace_seconds: int) -> None:
        body = client.V1Eviction(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            delete_options=client.V1DeleteOptions(grace_period_seconds=grace_seconds),
        )
        try:
            _drop(self.core.create_namespaced_pod_eviction(name, namespace, body, **RAW))
        except ApiException as e:
            if e.status == 404:
                return
            if e.status in (429, 500):
                # A PodDisruptionBudget blocks the eviction (429), or the pod has several and the Eviction API
                # refuses to choose (500, "more than one PodDisruptionBudget": pkg/registry/core/pod/storage/
                # eviction.go); the node goes anyway at the deadline, and a graceful delete still gives the trainer
                # its SIGTERM checkpoint.
                log.warning("eviction of %s/%s refused (%s %s); deleting it gracefully", namespace, name, e.status,
                            e.reason)
                self.delete_pod(namespace, name, grace_seconds, "interruption notice: eviction refused")
                return
            raise

    def replace_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Writes the whole status with the resourceVersion the job was read at: raises Conflict when someone wrote
        the job since (the caller reads again and decides again), and really removes what ``status`` leaves out,
        which a merge patch would keep. Returns the job as stored."""
        body = {"apiVersion": job["apiVersion"], "kind": job["kind"], "metadata": job["metadata"], "status": status}
        meta = job["metadata"]
        try:
            response = self.custom.replace_namespaced_custom_object_status(
                wk.GROUP, wk.VERSION, meta["namespace"], wk.PLURAL, meta["name"], body, **RAW)
        except ApiException as e:
            if e.status == 409:
                raise Conflict(f"{meta['namespace']}/{meta['name']} changed since it was read") from e
            raise
        stored: dict[str, Any] = json.loads(response.data)
        return stored

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                wk.GROUP, wk.VERSION, namespace, wk.PLURAL, name, propagation_policy="Background",
                _request_timeout=TIMEOUT,
            )
        except ApiException as e:
            if e.status != 404:
                raise

    def annotate_node(self, node: str, annotations: dict[str, str | None]) -> None:
        try:
            _drop(self.core.patch_node(node, {"metadata": {"annotations": annotations}}, **RAW))
        except ApiException as e:
            if e.status != 404:
                raise

    def post_event(self, job: dict[str, Any], type_: str, reason: str, message: str, reporter: str) -> None:
        meta = job["metadata"]
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=job["apiVersion"], kind=job["kind"], name=meta["name"], namespace=meta["namespace"],
                uid=meta["uid"], resource_version=meta.get("resourceVersion"),
            ),
            type=type_, reason=reason, message=message[:1024],
            source=client.V1EventSource(component=reporter), reporting_component=reporter,
            first_timestamp=_now(), last_timestamp=_now(), count=1,
        )
        try:
            _drop(self.core.create_namespaced_event(meta["namespace"], body, **RAW))
        except ApiException as e:
            log.warning("could not post event %s: %s", reason, e.reason)


class Conflict(Exception):
    """An optimistic-concurrency write lost: the object changed since it was read."""


def _drop(response: Any) -> None:
    """Reads a raw answer to its end, which hands the connection back to the pool."""
    response.drain_conn()
    response.release_conn()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
