"""The kind quickstart (dev/kind) cannot run here (no Docker), so its configuration is checked against what it
will meet: the job's pools place workers, with the operator's own core, on kind's workers (kind-config.yaml) and
on the devcluster's pools (dev/cluster.yaml); the in-cluster S3 server, its bucket and Secret are the ones the job
names; kind-up.sh applies them and waits for the job to succeed."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from spotrain_dev import topology
from spotrain_operator import wellknown as wk
from spotrain_operator.api import parse_spec
from spotrain_operator.core import actions as act
from spotrain_operator.core.model import JobStatus, NodeView
from spotrain_operator.core.pods import JobRef
from spotrain_operator.core.reconcile import Observed, decide

REPO = Path(__file__).resolve().parents[2]
KIND = REPO / "dev" / "kind"
JOB = yaml.safe_load((KIND / "quickstart-kind.yaml").read_text())
S3 = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all((KIND / "s3.yaml").read_text())}
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def kind_nodes() -> list[NodeView]:
    config = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    nodes = []
    for i, node in enumerate(n for n in config["nodes"] if n["role"] == "worker"):
        taints = [t for patch in node.get("kubeadmConfigPatches", [])
                  for t in yaml.safe_load(patch)["nodeRegistration"].get("taints", [])]
        nodes.append(NodeView.from_body({
            "metadata": {"name": f"spotrain-worker{i or ''}", "labels": node["labels"]},
            "spec": {"providerID": f"kind://docker/spotrain/spotrain-worker{i or ''}", "taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
    return nodes


def devcluster_nodes() -> list[NodeView]:
    topo = topology.load()
    nodes = []
    for i, (pool, zone, instance_type) in enumerate(topo.node_specs()):
        manifest = topology.node_manifest(topo, pool, zone, instance_type, f"{pool.name}-{i}", i)
        manifest["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        nodes.append(NodeView.from_body(manifest))
    return nodes


@pytest.mark.parametrize("cluster", [kind_nodes, devcluster_nodes], ids=["kind", "devcluster"])
def test_the_quickstart_places_its_workers_and_rendezvous(cluster: Any) -> None:
    nodes = cluster()
    spec = parse_spec(JOB["spec"])
    for pool in spec.pools:
        assert any(pool.matches(dict(n.labels)) for n in nodes), f"pool {pool.name} matches no node"
    observed = Observed(JobRef("quickstart", "spotrain-demo", "0123456789abcdef"), 1, spec, JobStatus(), [],
                        {n.name: n for n in nodes}, NOW, {})
    created = [a.manifest for a in decide(observed).actions if isinstance(a, act.CreatePod)]
    roles = [(m["metadata"]["labels"][wk.ROLE_LABEL], m["metadata"]["labels"][wk.POOL_LABEL]) for m in created]
    assert ("rendezvous", "on-demand") in roles
    assert ("worker", "spot-cpu") in roles


def test_the_in_cluster_s3_is_what_the_job_names() -> None:
    checkpoint = JOB["spec"]["checkpoint"]
    namespace = JOB["metadata"]["namespace"]
    endpoint = urlparse(checkpoint["s3"]["endpointURL"])
    service = S3[("Service", "s3")]
    assert endpoint.hostname == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    assert endpoint.port == service["spec"]["ports"][0]["port"]
    secret = S3[("Secret", checkpoint["s3"]["credentialsSecret"])]
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert secret["metadata"]["namespace"] == namespace
    bucket_url = S3[("Job", "s3-bucket")]["spec"]["template"]["spec"]["containers"][0]["args"][-1]
    assert bucket_url == f"{checkpoint['s3']['endpointURL']}/{urlparse(checkpoint['uri']).netloc}"


def test_kind_up_builds_the_example_image_and_waits_for_the_job() -> None:
    script = (KIND / "kind-up.sh").read_text()
    image = JOB["spec"]["template"]["spec"]["containers"][0]["image"]
    assert f'quickstart_image="{image}"' in script
    assert JOB["spec"]["template"]["spec"]["containers"][0]["args"][0] == "train_tiny.py"
    assert re.search(r"COPY train_tiny.py /workspace/.*\"\$repo/examples\"", script, re.S)
    assert (REPO / "examples" / "train_tiny.py").exists()
    for step in ('apply -f "$here/s3.yaml"', 'apply -f "$here/quickstart-kind.yaml"',
                 "--for=jsonpath='{.status.phase}'=Succeeded", "--skip-crds", "charts/spotrain-crds"):
        assert step in script
