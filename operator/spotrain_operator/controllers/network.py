"""The kopf index of the jobs' NetworkPolicies (core/network.py), registered only when the operator makes them
(``--network-policy``): without the flag it watches no NetworkPolicy and needs no RBAC for them.

The index maps (namespace, job name) to the spec hash annotated on the job's policy. The job daemon takes it from
its kwargs (named ``INDEX``) and ``policy_hash`` gives ``Observed.network_policy_hash``; the core renders the policy
again and asks for it only when the hashes differ, so a current policy costs no API call, and one deleted or edited
by hand is put back within a resync.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import kopf

from spotrain_operator import wellknown as wk
from spotrain_operator.core.network import SPEC_HASH_ANNOTATION
from spotrain_operator.core.pods import owning_job

INDEX = "job_network_policies"
PolicyIndex = Mapping[tuple[str, str], Collection[str]]


async def job_network_policies(namespace: str | None, body: kopf.Body,
                               **_: Any) -> dict[tuple[str, str], str] | None:
    job = owning_job(body["metadata"])
    if job is None:
        return None
    return {(namespace or "", job): (body["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION, "")}


def register() -> None:
    """Registers the index with kopf's default registry; called by main before the operator starts."""
    kopf.index("networking.k8s.io", "v1", "networkpolicies", labels={wk.JOB_LABEL: kopf.PRESENT},
               id=INDEX)(job_network_policies)


def policy_hash(index: PolicyIndex | None, key: tuple[str, str]) -> str | None:
    """The spec hash on the job's policy in the cluster; None when it has none, or the index is not registered."""
    return next(iter(index.get(key, ())), None) if index is not None else None
