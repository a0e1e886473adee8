"""The manifests a job is made of: names that are valid for any valid job name, Pod Security, the control token."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import yaml
from hypothesis import given
from hypothesis import strategies as st

from spotrain_operator import wellknown as wk
from spotrain_operator.api import parse_spec
from spotrain_operator.cluster import Cluster
from spotrain_operator.controllers import jobs
from spotrain_operator.core.placement import Choice
from spotrain_operator.core.pods import (
    JobRef,
    dns_label,
    job_label_value,
    owning_job,
    render_control_secret,
    render_rendezvous,
    render_rendezvous_service,
    render_worker,
    rendezvous_pod_name,
    selector,
    worker_name,
)
from spotrain_protocol import envvars

QUICKSTART = yaml.safe_load((Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml").read_text())
JOB = JobRef("job", "ns", "0123456789abcdef", "t0ken")

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# Valid job names: DNS-1123 subdomains of up to 253 characters (what the API server accepts for metadata.name).
_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
job_names = st.lists(_label, min_size=1, max_size=8).map(".".join).filter(lambda n: len(n) <= 253)


def spec(template: dict[str, Any] | None = None, **checkpoint: Any) -> Any:
    raw = copy.deepcopy(QUICKSTART["spec"])
    if template is not None:
        raw["template"] = template
    raw["checkpoint"].update(checkpoint)
    return parse_spec(raw)


def worker(job: JobRef = JOB, spec_: Any = None) -> dict[str, Any]:
    return render_worker(job, spec_ or spec(), Choice("spot-cpu", "us-east-1a"), 3, 2, None)


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def test_plain_names_stay_as_they_are() -> None:
    assert JOB.rendezvous_service == "job-rdzv"
    assert worker_name(JOB, 3, 2) == "job-worker-3-g2"
    assert rendezvous_pod_name(JOB, 2) == "job-rdzv-g2"
    assert JOB.label == "job"


def test_names_with_dots_or_a_leading_digit_become_valid() -> None:
    for name in ("llama-3.1-ft", "7b-run"):
        job = JobRef(name, "ns", "uid-1")
        assert DNS_1035.match(job.rendezvous_service), job.rendezvous_service
        assert DNS_1035.match(worker_name(job, 1, 1))
        assert job.label == name  # short enough for a label value as it is
    assert JobRef("llama-3.1-ft", "ns", "u").rendezvous_service != JobRef("llama-3-1-ft", "ns", "u").rendezvous_service


@given(job_names)
def test_every_valid_job_name_gives_valid_names_and_labels(name: str) -> None:
    job = JobRef(name, "ns", "0123456789abcdef", "t")
    for derived in (job.rendezvous_service, worker_name(job, 12345, 678), rendezvous_pod_name(job, 678),
                    job.control_secret):
        assert len(derived) <= 63 and DNS_1035.match(derived), derived
    assert len(job.label) <= 63 and LABEL_VALUE.match(job.label), job.label
    pod = worker(job)
    for key, value in pod["metadata"]["labels"].items():
        assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
    assert pod["metadata"]["labels"][wk.JOB_LABEL] == job.label
    assert selector(job) == f"{wk.JOB_LABEL}={job.label},{wk.ROLE_LABEL}=worker"
    assert owning_job(pod["metadata"]) == name
    service = render_rendezvous_service(job, spec(), 1)
    assert service["spec"]["selector"][wk.JOB_LABEL] == job.label
    assert job.rendezvous_endpoint(29400).startswith(f"{job.rendezvous_service}.ns.svc:")


@given(job_names, job_names)
def test_different_jobs_get_different_names(a: str, b: str) -> None:
    if a != b:
        ja, jb = JobRef(a, "ns", "u"), JobRef(b, "ns", "u")
        assert ja.rendezvous_service != jb.rendezvous_service
        assert ja.label != jb.label
        assert worker_name(ja, 1, 1) != worker_name(jb, 1, 1)


def test_a_pod_of_a_long_named_job_wakes_that_job_and_is_indexed_under_it() -> None:
    name = "a" * 100 + ".b"
    pod = worker(JobRef(name, "ns", "0123456789abcdef"))
    pod["spec"]["nodeName"] = "n1"
    assert pod["metadata"]["labels"][wk.JOB_LABEL] != name
    rt = jobs.Runtime(cast(Cluster, None))
    rt.wakeups = {("ns", name): asyncio.Event()}
    changed = cast(Callable[..., Coroutine[Any, Any, None]], jobs.pod_changed)  # kopf types it as its protocol
    asyncio.run(changed(namespace="ns", body=pod, labels=pod["metadata"]["labels"], memo=rt))
    assert rt.wakeups[("ns", name)].is_set()
    index = cast(Callable[..., Coroutine[Any, Any, Any]], jobs.jobs_by_node)
    assert asyncio.run(index(spec=pod["spec"], namespace="ns", body=pod)) == {"n1": ("ns", name)}


def test_dns_label_cuts_long_names_with_a_hash() -> None:
    long = "a" * 253
    assert dns_label(long, "-rdzv").endswith("-rdzv") and len(dns_label(long, "-rdzv")) == 63
    assert job_label_value(long) != job_label_value("a" * 252)


def test_the_control_token_comes_from_the_jobs_secret() -> None:
    secret = render_control_secret(JOB)
    assert secret["kind"] == "Secret" and secret["stringData"] == {"token": "t0ken"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == JOB.uid
    ref = env_of(worker())[envvars.CONTROL_TOKEN]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "token"}
    assert "t0ken" not in repr(JOB), "the token stays out of logs"
    no_token = JobRef("job", "ns", "0123456789abcdef")
    assert envvars.CONTROL_TOKEN not in env_of(worker(no_token))


def test_the_control_secret_name_changes_with_the_uid() -> None:
    assert JobRef("job", "ns", "aaaaaaaa-1").control_secret != JobRef("job", "ns", "bbbbbbbb-1").control_secret


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of Pod Security "restricted" (k8s.io/pod-security-admission/policy, v1.30+) that a pod spec alone
    decides: runAsNonRoot, seccomp, privilege escalation, capabilities, plus the baseline ones spotrain could break."""
    spec_ = pod["spec"]
    pod_sc = spec_.get("securityContext") or {}
    bad = []
    for c in [*(spec_.get("initContainers") or []), *spec_["containers"]]:
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") if "runAsNonRoot" in sc else pod_sc.get("runAsNonRoot")):
            bad.append(f"{c['name']}: runAsNonRoot")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{c['name']}: seccompProfile")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: allowPrivilegeEscalation")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{c['name']}: capabilities")
        if sc.get("privileged"):
            bad.append(f"{c['name']}: privileged")
        if c.get("resources", {}).get("limits") is None and c["name"] == "rendezvous":
            bad.append("rendezvous: no limits")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec_.get(key):
            bad.append(key)
    return bad


def test_the_rendezvous_pod_is_restricted_and_has_resources() -> None:
    pod = render_rendezvous(JOB, spec(), "us-east-1a", 1)
    assert _restricted_violations(pod) == []
    resources = pod["spec"]["containers"][0]["resources"]
    assert set(resources) == {"requests", "limits"}
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_a_worker_is_restricted_when_its_template_runs_as_non_root() -> None:
    template = copy.deepcopy(QUICKSTART["spec"]["template"])
    template["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": 65532}
    assert _restricted_violations(worker(spec_=spec(template))) == []
    # Without it spotrain adds everything else, but not runAsNonRoot: that is the image's to allow.
    assert _restricted_violations(worker()) == ["trainer: runAsNonRoot"]


def test_a_template_keeps_its_own_security_settings() -> None:
    template = copy.deepcopy(QUICKSTART["spec"]["template"])
    template["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]},
                                                            "seccompProfile": {"type": "Unconfined"}}
    template["spec"]["containers"].append({"name": "debug", "image": "busybox",
                                           "securityContext": {"privileged": True}})
    pod = worker(spec_=spec(template))
    trainer, debug = pod["spec"]["containers"]
    assert trainer["securityContext"]["capabilities"] == {"add": ["IPC_LOCK"]}
    assert trainer["securityContext"]["allowPrivilegeEscalation"] is False
    assert "seccompProfile" not in pod["spec"]["securityContext"]
    assert debug["securityContext"] == {"privileged": True}


def test_the_launcher_is_the_default_command() -> None:
    assert worker()["spec"]["containers"][0]["command"] == ["spotrain-launch"]
    template = copy.deepcopy(QUICKSTART["spec"]["template"])
    template["spec"]["containers"][0]["command"] = ["bash", "-c", "exec spotrain-launch train.py"]
    assert worker(spec_=spec(template))["spec"]["containers"][0]["command"][0] == "bash"


def test_s3_checkpoints_are_staged_on_an_empty_dir() -> None:
    pod = worker(spec_=spec(uri="s3://bucket/prefix"))
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    assert volumes["spotrain-staging"] == {"name": "spotrain-staging", "emptyDir": {}}
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert env_of(pod)[envvars.STAGING_DIR]["value"] == mounts["spotrain-staging"]
    local = worker(spec_=spec(uri="/mnt/ckpt", volume={"claimName": "ckpt"}))
    assert "spotrain-staging" not in {v["name"] for v in local["spec"].get("volumes", [])}
    assert envvars.STAGING_DIR not in env_of(local)
    limited = worker(spec_=spec(uri="s3://bucket/prefix", stagingSizeLimit="50Gi"))
    volumes = {v["name"]: v for v in limited["spec"]["volumes"]}
    assert volumes["spotrain-staging"]["emptyDir"] == {"sizeLimit": "50Gi"}
