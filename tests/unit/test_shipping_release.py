"""A versioned release: one version (pyproject.toml's) everywhere it is written, a CHANGELOG entry for it, and
both charts package and lint."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from spotrain_dev import testbin

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
CHARTS = [REPO / "charts" / "spotrain", REPO / "charts" / "spotrain-crds"]


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_charts_carry_the_version(chart: Path) -> None:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert (meta["version"], meta["appVersion"]) == (VERSION, VERSION)
    assert meta["kubeVersion"] == ">=1.29.0-0"
    assert meta["home"] and meta["sources"] and meta["maintainers"]


def test_dockerfile_labels_default_to_the_version() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG VERSION={re.escape(VERSION)}$", dockerfile, re.M)
    for label in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{label}=" in dockerfile


def test_changelog_names_the_version() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+[^\]]*)\]", changelog, re.M)
    assert released and released[0] == VERSION, f"newest release in CHANGELOG.md is {released[:1]}, not {VERSION}"


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_charts_lint_and_package(chart: Path, tmp_path: Path) -> None:
    helm = str(testbin.path("helm"))
    lint = subprocess.run([helm, "lint", "--strict", str(chart)], capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    package = subprocess.run([helm, "package", str(chart), "--destination", str(tmp_path)], capture_output=True,
                             text=True, timeout=120)
    assert package.returncode == 0, package.stdout + package.stderr
    assert (tmp_path / f"{chart.name}-{VERSION}.tgz").exists()


def test_crd_chart_renders_the_crd_of_crds_dir_unchanged() -> None:
    out = subprocess.run([str(testbin.path("helm")), "template", "spotrain-crds", str(CHARTS[1])],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    source = yaml.safe_load((REPO / "crds" / "spotrain.dev_spotrainingjobs.yaml").read_text())
    assert len(rendered) == 1
    crd = rendered[0]
    metadata = crd.pop("metadata")
    assert metadata.pop("annotations")["helm.sh/resource-policy"] == "keep"
    assert metadata.pop("labels")["app.kubernetes.io/managed-by"] == "Helm"
    assert {**crd, "metadata": metadata} == source


def test_chart_readme_is_generated_from_values() -> None:
    result = subprocess.run([sys.executable, str(CHARTS[0] / "hack" / "generate_readme.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
