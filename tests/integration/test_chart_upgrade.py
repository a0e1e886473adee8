"""Upgrading an installation of the previous chart (0.1.0, whose CRD came from crds/) to this one on the
devcluster, with a SpotTrainingJob running, the way docs/operations.md ("Upgrading") says: the spotrain-crds
release adopts the CRD, then the spotrain release is upgraded with --skip-crds. The job keeps its uid, spec and
generation, and keeps running: the same worker pods, still Running, and the operator still reconciling it after
the CRD was replaced. Uninstalling spotrain-crds keeps the CRD and so the job."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotrain_dev.cluster import DevCluster
from spotrain_dev.testing import Harness, wait_for
from spotrain_operator import wellknown as wk

REPO = Path(__file__).resolve().parents[2]
# The last commit whose chart is 0.1.0 as released: the CRD only in the chart's crds/, no spotrain-crds chart.
PREVIOUS = "bda4723"
CRD = f"{wk.PLURAL}.{wk.GROUP}"
RELEASE, CRDS_RELEASE = "spotrain", "spotrain-crds"
HELM_OWNERSHIP = {"labels": ["app.kubernetes.io/managed-by"],
                  "annotations": ["meta.helm.sh/release-name", "meta.helm.sh/release-namespace"]}


@pytest.fixture
def previous_chart(tmp_path: Path) -> Path:
    """charts/spotrain as it was at PREVIOUS (with the crds/ its symlink points to)."""
    archive = subprocess.run(["git", "archive", "--format=tar", PREVIOUS, "charts/spotrain", "crds"], cwd=REPO,
                             capture_output=True)
    assert archive.returncode == 0, (f"cannot read the previous chart from git ({PREVIOUS}); a full clone is "
                                     f"needed: {archive.stderr.decode()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp_path, filter="tar")
    chart = tmp_path / "charts" / "spotrain"
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["version"] == "0.1.0"
    return chart


def _get(devcluster: DevCluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(devcluster.kubectl(*args, "-o", "json")))


@pytest.fixture
def crd_ownership_restored(devcluster: DevCluster) -> Iterator[None]:
    """The session's CRD is shared by every test: whatever this test does, it ends without Helm's ownership."""
    yield
    for kind, keys in HELM_OWNERSHIP.items():
        verb = "label" if kind == "labels" else "annotate"
        devcluster.kubectl(verb, "crd", CRD, *(f"{k}-" for k in keys), check=False)


def _running(harness: Harness) -> dict[str, str]:
    """The job's Running workers (name -> uid) once the job is Running with both of them ready, else {}."""
    status = harness.status()
    workers = {p.metadata.name: p.metadata.uid for p in harness.running_workers()}
    return workers if status.get("phase") == "Running" and status.get("readyWorkers") == 2 == len(workers) else {}


def test_upgrade_from_the_previous_chart_keeps_the_job_running(
    devcluster: DevCluster, harness: Harness, helm: Any, previous_chart: Path, crd_ownership_restored: None
) -> None:
    namespace = harness.namespace
    kube = ["--kubeconfig", str(devcluster.kubeconfig), "--namespace", namespace]
    helm("install", RELEASE, previous_chart, *kube)
    try:
        nodes = [harness.add_node("spot-cpu", zone) for zone in ("us-east-1a", "us-east-1b")]
        nodes.append(harness.add_node("on-demand", "us-east-1a"))
        harness.wait_nodes_ready(nodes)
        # The chart's operator Deployment cannot run here (KWOK marks its pod Running but runs no container, and
        # no image is built), so an operator process from this checkout stands in for it, watching the namespace
        # of the release, across the whole upgrade as the Deployment's pod would.
        harness.start_operator()
        harness.create_job(harness.job_manifest(min_nodes=2, max_nodes=2))
        workers = wait_for("the job Running on 2 workers", lambda: _running(harness), timeout=120)
        before = harness.job()

        # docs/operations.md: the spotrain-crds release adopts the CRD the 0.1.0 chart installed from crds/.
        devcluster.kubectl("label", "--overwrite", "crd", CRD, "app.kubernetes.io/managed-by=Helm")
        devcluster.kubectl("annotate", "--overwrite", "crd", CRD, f"meta.helm.sh/release-name={CRDS_RELEASE}",
                           f"meta.helm.sh/release-namespace={namespace}")
        helm("install", CRDS_RELEASE, REPO / "charts" / "spotrain-crds", *kube, "--wait")
        helm("upgrade", RELEASE, REPO / "charts" / "spotrain", *kube, "--skip-crds", "--reset-then-reuse-values",
             "--wait", "--timeout", "180s")
        helm("upgrade", CRDS_RELEASE, REPO / "charts" / "spotrain-crds", *kube, "--wait")

        crd = _get(devcluster, "get", "crd", CRD)
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == CRDS_RELEASE
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        source = yaml.safe_load((REPO / "crds" / "spotrain.dev_spotrainingjobs.yaml").read_text())
        assert [v["name"] for v in crd["spec"]["versions"]] == [v["name"] for v in source["spec"]["versions"]]
        established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert established["Established"] == "True"

        # The operator has looked at the job since the CRD was replaced (reconcile passes counted after it), and
        # the job is as it was: the same worker pods, still Running, and nothing it was told to do changed.
        harness.wait_reconciles()
        assert _running(harness) == workers
        after = harness.job()
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert after["spec"] == before["spec"]
        assert after["status"]["rendezvous"] == before["status"]["rendezvous"]
        manifest = [d for d in yaml.safe_load_all(helm("get", "manifest", RELEASE, *kube).stdout) if d]
        assert {d["kind"] for d in manifest} >= {"Deployment", "DaemonSet"}
        releases = {r["name"]: r for r in json.loads(helm("list", *kube, "-o", "json").stdout)}
        assert (releases[RELEASE]["revision"], releases[RELEASE]["status"]) == ("2", "deployed")

        # Uninstalling the CRD release keeps the CRD (helm.sh/resource-policy: keep), and with it the job.
        helm("uninstall", CRDS_RELEASE, *kube, "--wait")
        assert harness.job()["metadata"]["uid"] == before["metadata"]["uid"]
    finally:
        for release in (RELEASE, CRDS_RELEASE):
            if release in helm("list", "--short", *kube).stdout.split():
                helm("uninstall", release, "--wait", "--timeout", "60s", *kube)
    devcluster.kubectl("get", "crd", CRD)
