"""The return-to-spot probe pod: named, labelled and owned like the job's other pods for any job name, and within
Pod Security "restricted" (the API server's own check runs in tests/integration/operator/test_autoscaling.py)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from spotrain_operator import wellknown as wk
from spotrain_operator.core.placement import Choice
from spotrain_operator.core.pods import JobRef, job_label_value
from spotrain_operator.core.provisioning import PROBE_ROLE, render_probe, render_rendezvous_pdb

DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# Object names as the API server accepts a SpotTrainingJob's: a DNS-1123 subdomain, up to 253 characters.
_segment = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
job_names = st.lists(_segment, min_size=1, max_size=12).map(".".join).filter(lambda n: len(n) <= 253)


def probe(name: str = "job", requests: dict[str, Decimal] | None = None) -> dict[str, Any]:
    job = JobRef(name, "ns", "0123456789abcdef")
    return render_probe(job, Choice("spot", "us-east-1b"), 12, 3, {wk.KARPENTER_NODEPOOL: "spot"},
                        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                        requests if requests is not None else {"cpu": Decimal(2), "memory": Decimal(4 * 1024 ** 3)})


@given(job_names, st.integers(min_value=1, max_value=10 ** 9), st.integers(min_value=1, max_value=10 ** 6))
def test_the_probe_name_and_labels_are_valid_for_any_job_name(name: str, serial: int, round_: int) -> None:
    job = JobRef(name, "ns", "0123456789abcdef")
    pod = render_probe(job, Choice("spot", "us-east-1a"), serial, round_, {}, [], {"cpu": Decimal(1)})
    meta = pod["metadata"]
    assert len(meta["name"]) <= 63 and DNS_1035.fullmatch(meta["name"]), meta["name"]
    assert meta["name"].endswith(f"-probe-{serial}-g{round_}")
    for value in meta["labels"].values():
        assert len(value) <= 63 and LABEL_VALUE.fullmatch(value), value
    assert meta["labels"][wk.JOB_LABEL] == job_label_value(name)  # what the operator lists the job's pods by
    assert meta["ownerReferences"] == [job.owner_reference()]
    pdb = render_rendezvous_pdb(job)
    assert pdb["spec"]["selector"]["matchLabels"][wk.JOB_LABEL] == job_label_value(name)
    assert len(pdb["metadata"]["name"]) <= 63


def test_the_probe_is_restricted_and_owned_like_a_worker() -> None:
    pod = probe()
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"][wk.ROLE_LABEL] == PROBE_ROLE and meta["annotations"][wk.ZONE] == "us-east-1b"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert spec["nodeSelector"] == {wk.KARPENTER_NODEPOOL: "spot", wk.ZONE: "us-east-1b"}


def test_the_probe_asks_for_a_workers_size_with_gpus_as_limits() -> None:
    (container,) = probe(requests={"cpu": Decimal("0.5"), "nvidia.com/gpu": Decimal(8)})["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "0.5", "nvidia.com/gpu": "8"},
                                      "limits": {"cpu": "0.5", "nvidia.com/gpu": "8"}}
