"""uv.lock is what `make` and the images install: the venv is synced from it, and the images' hashed requirements
(requirements/*.txt, which the Dockerfile installs with --require-hashes) are its export.

`make requirements` is the one place the export's arguments are written; these tests run it (and read `make -n`)
instead of repeating them."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements"
LOCK = tomllib.loads((REPO / "uv.lock").read_text())
LOCKED_VERSIONS: dict[str, set[str]] = {}
for _package in LOCK["package"]:
    LOCKED_VERSIONS.setdefault(_package["name"], set()).add(_package.get("version", ""))


def make(*args: str) -> subprocess.CompletedProcess[str]:
    # Offline: the export reads uv.lock and pyproject.toml only; --locked fails if they disagree.
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "UV_OFFLINE": "1"})


def pinned(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every requirement in a uv-exported requirements file (markers kept apart)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split(" --hash=")
        requirement = Requirement(spec)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {spec} is not pinned to one version"
        key = f"{requirement.name}; {requirement.marker}" if requirement.marker else requirement.name
        entries[key] = (specifier.version, [h.split()[0] for h in options])
    return entries


def test_committed_requirements_are_the_export_of_uv_lock(tmp_path: Path) -> None:
    result = make("requirements", f"REQUIREMENTS_DIR={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    exported = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in REQUIREMENTS.iterdir()}
    assert exported.keys() == committed.keys()
    stale = [name for name in exported if exported[name] != committed[name]]
    assert not stale, f"requirements/{stale} differ from uv.lock's export: run `make requirements` and commit them"


@pytest.mark.parametrize("name", ["operator.txt", "trainer.txt", "trainer-without-torch.txt"])
def test_every_requirement_is_a_locked_version_with_its_hashes(name: str) -> None:
    entries = pinned(REQUIREMENTS / name)
    assert entries
    for key, (version, hashes) in entries.items():
        package = key.split(";")[0]
        assert version in LOCKED_VERSIONS.get(package, set()), f"{name}: {key}=={version} is not in uv.lock"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{name}: {key} unhashed"


def test_each_image_gets_only_its_side_of_the_lock() -> None:
    operator = {k.split(";")[0] for k in pinned(REQUIREMENTS / "operator.txt")}
    trainer = {k.split(";")[0] for k in pinned(REQUIREMENTS / "trainer.txt")}
    without_torch = {k.split(";")[0] for k in pinned(REQUIREMENTS / "trainer-without-torch.txt")}
    assert {"kopf", "kubernetes", "boto3", "prometheus-client", "pyyaml"} <= operator and "torch" not in operator
    assert {"torch", "numpy", "boto3", "prometheus-client", "pyyaml"} <= trainer and "kopf" not in trainer
    # A TORCH_INDEX_URL build takes torch and what only torch needs from that index, the rest from the lock.
    assert without_torch < trainer
    assert {"numpy", "boto3", "prometheus-client", "pyyaml"} <= without_torch
    assert not {p for p in without_torch if p in {"torch", "triton", "sympy"} or p.startswith("nvidia-")}


def test_a_lock_change_rebuilds_the_venv_from_the_lock() -> None:
    # -W: as if uv.lock had just changed; -n: print the recipe instead of running it.
    result = make("-n", "-W", "uv.lock", "venv")
    assert result.returncode == 0, result.stderr
    sync = [line for line in result.stdout.splitlines() if " sync " in line]
    assert len(sync) == 1, result.stdout
    words = sync[0].split()
    assert {"--locked", "--inexact"} <= set(words)
    extras = {words[i + 1] for i, word in enumerate(words) if word == "--extra"}
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"operator", "trainer", "dev"} <= extras <= declared.keys()
