"""Packaging without a container engine: the chart's CRD copy, the Dockerfile's two targets, the build context
that .dockerignore leaves, the wheel that context builds, the package's extras, and the kind cluster config.

No Docker engine runs in CI, so these check what `docker build` would consume instead of running it."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from spotrain_operator import wellknown as wk

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spotrain"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
KIND = REPO / "dev" / "kind"
IMAGE_UID = 65532


# -- the chart's CRDs -------------------------------------------------------------------------------------


def test_chart_ships_the_canonical_crds() -> None:
    # charts/spotrain/crds is a symlink to crds/ (helm follows it when linting, templating and packaging), so
    # the chart can never install a CRD other than the one the tests run against.
    assert (CHART / "crds").is_symlink()
    assert (CHART / "crds").resolve() == (REPO / "crds").resolve()
    assert list((CHART / "crds").glob("*.yaml")), "crds/ holds no CRD"


# -- the Dockerfile ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match, f"cannot parse FROM {args}"
            stages.append(Stage(name=match.group(2) or str(len(stages)), base=match.group(1)))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BY_NAME = {stage.name: stage for stage in STAGES}


def resolve_base(base: str) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: GLOBAL_ARGS[m.group(1) or m.group(2)], base)


def ancestry(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = []
    stage: Stage | None = BY_NAME[name]
    while stage is not None:
        chain.append(stage)
        stage = BY_NAME.get(stage.base)
    return chain


def copied_from(stage: Stage, path: str) -> Stage:
    for args in stage.all("COPY"):
        match = re.fullmatch(r"--from=(\S+)\s+(\S+)\s+(\S+)", args)
        if match and match.group(3) == path:
            return BY_NAME[match.group(1)]
    raise AssertionError(f"stage {stage.name} does not COPY {path} from another stage")


def test_every_image_builds_from_python_311_slim() -> None:
    roots = {resolve_base(s.base).partition("@")[0] for s in STAGES if s.base not in BY_NAME}
    assert roots == {"python:3.11-slim"}


def labels(stage: Stage) -> dict[str, str]:
    return dict(word.partition("=")[::2] for args in stage.all("LABEL") for word in shlex.split(args))


def test_base_image_is_pinned_by_digest_and_labelled() -> None:
    # One global ARG names the base, by digest, so a rebuild gets the same bytes whatever the tag points to now.
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", GLOBAL_ARGS["PYTHON_IMAGE"])
    assert {s.base for s in STAGES if s.base not in BY_NAME} == {"${PYTHON_IMAGE}"}
    # Both images carry it in the OCI base-name label: the stage that labels them redeclares the ARG without a
    # default (so it takes the global one, or a --build-arg) and writes it unchanged.
    for target in ("operator", "trainer"):
        (labelled,) = [stage for stage in ancestry(target) if stage.all("LABEL")]
        assert "PYTHON_IMAGE" in labelled.all("ARG")
        assert labels(labelled)["org.opencontainers.image.base.name"] == "${PYTHON_IMAGE}"


@pytest.mark.parametrize(
    ("target", "extra", "entrypoint"),
    [("operator", "operator", "spotrain-operator"), ("trainer", "trainer", "spotrain-launch")],
)
def test_target_installs_its_extra_and_runs_unprivileged(target: str, extra: str, entrypoint: str) -> None:
    assert target in BY_NAME, f"no stage named {target}"
    chain = ancestry(target)
    # The venv comes from a build stage that installs this extra's hashed requirements exported from uv.lock
    # (tests/unit/test_lockfile.py checks the export), then the wheel with this extra, and only this one,
    # without an index: every requirement of the extra must already be installed from the hashed file.
    venv_stage = copied_from(chain[0], "/opt/venv")
    installs = " ".join(venv_stage.all("RUN"))
    assert any(f"requirements/{extra}.txt" in shlex.split(args) for args in venv_stage.all("COPY"))
    hashed = re.search(r'install --require-hashes -r (\S+)', installs)
    assert hashed, f"{venv_stage.name} installs no hashed requirements"
    # The trainer's file is a shell variable (TORCH_INDEX_URL switches it); its first value is the default.
    assignment = re.search(r"\blocked=(\S+)", installs)
    hashed_file = assignment.group(1) if hashed.group(1) == '"$locked"' and assignment else hashed.group(1)
    assert hashed_file == f"/requirements/{extra}.txt"
    extras = set(re.findall(r"\.whl\)?\[(\w+)\]", installs))
    assert extras == {extra}, f"{venv_stage.name} installs the extras {extras}, expected {{{extra}}}"
    assert re.search(rf'install --no-index "\$\(ls /wheels/spotrain-\*\.whl\)\[{extra}\]"', installs)
    assert installs.rstrip().endswith("pip --python /opt/venv/bin/python check")
    # Non-root: the last USER of the target is a non-zero numeric uid (kubelet can verify runAsNonRoot only
    # for a numeric one), the uid the runtime stage creates and the chart's securityContext runs as.
    users = [args for stage in reversed(chain) for args in stage.all("USER")]
    assert users, f"{target} never sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == IMAGE_UID
    runs = " ".join(args for stage in chain for args in stage.all("RUN"))
    assert f"--uid {IMAGE_UID}" in runs
    # Exec form, so the entrypoint is PID 1 and gets SIGTERM (spotrain-launch then execs torchrun).
    assert chain[0].all("ENTRYPOINT") == [f'["{entrypoint}"]']
    # No compilers or package manager installs anywhere in the final image's ancestry.
    for stage in chain:
        for args in stage.all("RUN"):
            assert not re.search(r"apt-get|apk |yum |dnf |gcc|build-essential", args), (stage.name, args)


def test_trainer_torch_index_and_version_follow_pyproject() -> None:
    venv_stage = copied_from(BY_NAME["trainer"], "/opt/venv")
    args = dict(a.partition("=")[::2] for a in venv_stage.all("ARG"))
    assert "TORCH_INDEX_URL" in args, "the trainer's build stage takes no TORCH_INDEX_URL build-arg"
    assert args["TORCH_INDEX_URL"].strip('"') == "", "TORCH_INDEX_URL must be optional (empty by default)"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    torch = [r for r in extras["trainer"] if Requirement(r).name == "torch"]
    assert [args["TORCH_SPEC"].strip('"')] == torch, "Dockerfile's TORCH_SPEC differs from pyproject's torch"
    installs = " ".join(venv_stage.all("RUN"))
    assert '--index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"' in installs
    # torch from that index has other hashes than the lock's PyPI wheels: the rest comes from the export with
    # torch's dependency tree pruned, still hashed.
    assert re.search(r'"\$TORCH_SPEC" \s*&& locked=/requirements/trainer-without-torch\.txt;', installs)
    assert any("requirements/trainer-without-torch.txt" in shlex.split(a) for a in venv_stage.all("COPY"))


# -- the build context: .dockerignore and what the Dockerfile copies --------------------------------------


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(is_exception, pattern) in file order. Docker's matcher: the last matching pattern wins, and a pattern
    matches a path when it matches the path or one of its parent directories; `**` spans directories."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        patterns.append((exception, line.lstrip("!").strip("/")))
    return patterns


def _pattern_matches(pattern: str, path: str) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase(part, tail) for part in parts) or any(
            fnmatch.fnmatchcase(c, tail) for c in candidates
        )
    return any(fnmatch.fnmatchcase(c, pattern) and c.count("/") == pattern.count("/") for c in candidates)


def in_context(path: str) -> bool:
    included = True
    for exception, pattern in dockerignore_patterns():
        if _pattern_matches(pattern, path):
            included = exception
    return included


def context_copies() -> list[str]:
    """Sources of COPY instructions that read the build context (not another stage)."""
    sources: list[str] = []
    for stage in STAGES:
        for args in stage.all("COPY"):
            words = shlex.split(args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources.extend(w.rstrip("/") for w in words[:-1] if not w.startswith("--"))
    return sources


def context_files(source: str) -> list[Path]:
    root = REPO / source
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [p for p in files if in_context(p.relative_to(REPO).as_posix())]


def test_dockerignore_keeps_what_copy_needs_and_nothing_local() -> None:
    sources = context_copies()
    assert sorted(sources) == ["operator", "protocol", "pyproject.toml", "requirements/operator.txt",
                               "requirements/trainer-without-torch.txt", "requirements/trainer.txt", "trainer"]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path"
        assert context_files(source), f"COPY {source}: .dockerignore excludes all of it"
    for local in [".venv/bin/python", ".dev/kubeconfig", "tests/conftest.py", ".git/HEAD", "README.md",
                  "operator/spotrain_operator/__pycache__/api.cpython-311.pyc", "spotrain.egg-info/PKG-INFO"]:
        assert not in_context(local), f"{local} would be sent to the docker daemon"


def test_build_context_builds_a_wheel_with_both_packages_and_extras(tmp_path: Path) -> None:
    """What the Dockerfile's `wheel` stage runs, on exactly the files the build context would hold."""
    context = tmp_path / "context"
    for source in context_copies():
        for file in context_files(source):
            target = context / file.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(context)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("spotrain-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        meta_text = archive.read(metadata).decode()
        scripts = archive.read(entry_points).decode()
    packages = {n.split("/")[0] for n in names if "/" in n and not n.split("/")[0].endswith(".dist-info")}
    # Every package pyproject.toml ships, except the development tooling, which the context leaves out.
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = {pattern.rstrip("*") for pattern in find["include"]} - {"spotrain_dev"}
    assert packages == shipped, f"the image's wheel holds {packages}, pyproject.toml ships {shipped}"
    for script in ("spotrain-operator", "spotrain-agent", "spotrain-launch"):
        assert f"{script} = " in scripts
    provided = set(re.findall(r"^Provides-Extra: (\S+)$", meta_text, re.MULTILINE))
    assert {"operator", "trainer"} <= provided


# -- the package's extras -------------------------------------------------------------------------------


def requirements_by_extra() -> dict[str, set[str]]:
    by_extra: dict[str, set[str]] = {"": set()}
    for line in importlib.metadata.requires("spotrain") or []:
        requirement = Requirement(line)
        marker = str(requirement.marker or "")
        match = re.search(r'extra == "([^"]+)"', marker)
        by_extra.setdefault(match.group(1) if match else "", set()).add(requirement.name.lower())
    return by_extra


def test_operator_extra_has_no_torch_and_trainer_extra_has_no_kopf() -> None:
    extras = requirements_by_extra()
    assert {"kopf", "kubernetes", "prometheus-client", "boto3"} <= extras["operator"]
    assert "torch" not in extras["operator"]
    assert {"torch", "boto3", "prometheus-client"} <= extras["trainer"]
    assert not {"kopf", "kubernetes"} & extras["trainer"]
    # Base dependencies go into both images.
    assert not {"torch", "kopf", "kubernetes"} & extras[""]


def image_distributions(extra: str) -> set[str]:
    """The installed distributions an image built with this extra would hold: spotrain and the transitive
    closure of its base and `extra` requirements (environment markers evaluated here)."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    allowed = {"spotrain"}
    queue: list[tuple[str, frozenset[str]]] = [("spotrain", frozenset({extra}))]
    while queue:
        name, extras = queue.pop()
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": e}) for e in ("", *extras)
            )
            dep = norm(requirement.name)
            if not wanted or dep in allowed:
                continue
            try:
                importlib.metadata.distribution(dep)
            except importlib.metadata.PackageNotFoundError:
                continue  # an optional dependency not installed here is not in the image either
            allowed.add(dep)
            queue.append((dep, frozenset(requirement.extras)))
    return allowed


# Imports every module given, in a fresh interpreter where the top-level modules of every installed
# distribution outside the allowed set are absent, as they would be in the image: a None entry in sys.modules makes
# `import x` raise ModuleNotFoundError and `importlib.util.find_spec("x")` answer None, as for a missing module (a
# finder that raised instead would break libraries that probe for optional ones, e.g. yarl for pydantic_core).
IMPORT_CHECK = """
import importlib, importlib.metadata, json, re, sys
allowed, modules = set(json.loads(sys.argv[1])), json.loads(sys.argv[2])
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
for top, dists in importlib.metadata.packages_distributions().items():
    if not any(norm(d) in allowed for d in dists):
        sys.modules[top] = None
sys.modules["spotrain_dev"] = None  # development tooling: the image's context and wheel leave it out
for module in modules:
    importlib.import_module(module)
"""


@pytest.mark.parametrize(
    ("extra", "scripts", "absent"),
    [
        ("operator", ("spotrain-operator", "spotrain-agent"), {"torch"}),
        ("trainer", ("spotrain-launch",), {"kopf", "kubernetes"}),
    ],
)
def test_entry_points_import_with_only_their_image_dependencies(
    extra: str, scripts: tuple[str, ...], absent: set[str]
) -> None:
    allowed = image_distributions(extra)
    assert not absent & allowed, f"the {extra} image would contain {absent & allowed}"
    entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")}
    modules = [entry_points[script].module for script in scripts]
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, json.dumps(sorted(allowed)), json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{modules} need more than the {extra} extra:\n{result.stderr[-3000:]}"


# -- kind -------------------------------------------------------------------------------------------------


def _is_spot(labels: dict[str, str]) -> bool:
    return (
        labels.get(wk.KARPENTER_CAPACITY_TYPE) == "spot"
        or labels.get(wk.EKS_CAPACITY_TYPE) == "SPOT"
        or labels.get(wk.GKE_SPOT) == "true"
        or labels.get(wk.GKE_PREEMPTIBLE) == "true"
        or labels.get(wk.AKS_PRIORITY) == "spot"
    )


def test_kind_config_has_spot_and_on_demand_workers_in_three_zones() -> None:
    config = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 3
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    assert len({w["labels"][wk.ZONE] for w in workers}) == 3
    spot = [w for w in workers if _is_spot(w["labels"])]
    assert 0 < len(spot) < len(workers), "kind needs spot and on-demand workers"
    aks = [w for w in workers if w["labels"].get(wk.AKS_PRIORITY) == "spot"]
    assert len(aks) == 1
    patches = [yaml.safe_load(p) for p in aks[0]["kubeadmConfigPatches"]]
    taints = [t for p in patches if p["kind"] == "JoinConfiguration" for t in p["nodeRegistration"]["taints"]]
    assert taints == [{"key": wk.AKS_PRIORITY, "value": "spot", "effect": "NoSchedule"}]


def test_kind_up_script_builds_loads_and_installs() -> None:
    script = KIND / "kind-up.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert 'kind create cluster --name "$cluster" --config "$here/kind-config.yaml"' in text
    for target in ("operator", "trainer"):
        assert re.search(rf"docker build --target {target}\b", text)
    assert text.count("kind load docker-image") == 2
    assert re.search(r"helm upgrade --install spotrain \"\$repo/charts/spotrain\"", text)
    assert '--values "$here/values-kind.yaml"' in text
