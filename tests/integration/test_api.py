"""The SpotTrainingJob API against the real kube-apiserver: examples accepted, bad input rejected with the field
named, printer columns and kubectl explain."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotrain_dev.cluster import DevCluster

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
QUICKSTART = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml").read_text())


def apply(cluster: DevCluster, namespace: str, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["namespace"] = namespace
    return cluster.kubectl_run("apply", "--server-side", "-f", "-", input=json.dumps(manifest))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_accepted(devcluster: DevCluster, namespace: str, example: Path) -> None:
    manifest = yaml.safe_load(example.read_text())
    result = apply(devcluster, namespace, manifest)
    assert result.returncode == 0, result.stderr
    stored = json.loads(
        devcluster.kubectl("get", "stj", manifest["metadata"]["name"], "-n", namespace, "-o", "json")
    )
    # Defaults come from the schema, so every admitted object is complete.
    assert stored["spec"]["checkpoint"]["keepLast"] >= 1
    assert stored["spec"]["termination"]["sources"]["karpenter"] is True


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(manifest: dict[str, Any]) -> None:
        target: Any = manifest
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target.setdefault(key, {})
        last = keys[-1]
        if value is _DELETE:
            del target[last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


_DELETE = object()

# (id, mutation, text the error must contain: the field, and the rule where the server states one)
INVALID = [
    ("min-above-max", _set("spec.elastic.minNodes", 5), "spec.elastic.minNodes"),
    ("target-outside-range", _set("spec.elastic.targetNodes", 9), "spec.elastic.targetNodes"),
    ("no-pools", _set("spec.placement.pools", []), "spec.placement.pools"),
    ("fallback-is-spot", _set("spec.fallback.pool", "spot-cpu"), "spec.fallback.pool"),
    ("fallback-unknown-pool", _set("spec.fallback.pool", "nowhere"), "spec.fallback.pool"),
    ("bad-uri-scheme", _set("spec.checkpoint.uri", "gs://bucket/x"), "spec.checkpoint.uri"),
    ("bad-duration", _set("spec.placement.cooldown", "five minutes"), "spec.placement.cooldown"),
    ("bad-interval", _set("spec.checkpoint.interval", "often"), "spec.checkpoint.interval"),
    ("bad-capacity-type", _set("spec.placement.pools.0.capacityType", "preemptible"),
     "spec.placement.pools[0].capacityType"),
    ("duplicate-pool", _set("spec.placement.pools.1.name", "spot-cpu"), "spec.placement.pools"),
    ("no-containers", _set("spec.template.spec.containers", []), "spec.template.spec.containers"),
    ("container-without-image", _set("spec.template.spec.containers.0.image", _DELETE),
     "spec.template.spec.containers[0].image"),
    ("zero-max", _set("spec.elastic.maxNodes", 0), "spec.elastic.maxNodes"),
    ("price-ratio-above-one", _set("spec.placement.maxSpotPriceRatio", 1.5), "spec.placement.maxSpotPriceRatio"),
    ("s3-settings-on-path-uri", _set("spec.checkpoint.uri", "/mnt/ckpt"), "spec.checkpoint.s3"),
    ("negative-budget", _set("spec.budgets.maxPreemptions", -1), "spec.budgets.maxPreemptions"),
    ("cooldown-over-a-day", _set("spec.placement.cooldown", "100000000h"), "spec.placement.cooldown"),
    ("window-over-an-hour", _set("spec.elastic.scaleUpWindow", "2h"), "spec.elastic.scaleUpWindow"),
    ("margin-over-an-hour", _set("spec.termination.safetyMargin", "61m"), "spec.termination.safetyMargin"),
    ("ttl-over-a-year", _set("spec.ttlSecondsAfterFinished", 10**12), "spec.ttlSecondsAfterFinished"),
    ("failures-over-a-million", _set("spec.budgets.maxFailures", 10**7), "spec.budgets.maxFailures"),
    ("restart-policy-always", _set("spec.template.spec.restartPolicy", "Always"),
     "spec.template.spec.restartPolicy"),
    ("min-interval-above-max", _set("spec.checkpoint.minInterval", "2h"), "spec.checkpoint.minInterval"),
    ("unknown-zones-mode", _set("spec.placement.zones", "Scatter"), "spec.placement.zones"),
    ("rendezvous-unknown-pool", _set("spec.rendezvous.pool", "nowhere"), "spec.rendezvous.pool"),
]


@pytest.mark.parametrize(("mutation", "field"), [(m, f) for _, m, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(
    devcluster: DevCluster, namespace: str, mutation: Callable[[dict[str, Any]], None], field: str
) -> None:
    manifest = copy.deepcopy(QUICKSTART)
    mutation(manifest)
    result = apply(devcluster, namespace, manifest)
    assert result.returncode != 0, "the API server accepted an invalid SpotTrainingJob"
    assert field in result.stderr, result.stderr


def test_printer_columns_and_explain(devcluster: DevCluster, namespace: str) -> None:
    assert apply(devcluster, namespace, QUICKSTART).returncode == 0
    header = devcluster.kubectl("get", "stj", "-n", namespace).splitlines()[0].split()
    assert header == ["NAME", "PHASE", "WORKERS", "MIN", "MAX", "PREEMPTIONS", "CHECKPOINT", "AGE"]
    row = devcluster.kubectl("get", "stj", "-n", namespace, "--no-headers").split()
    assert row[0] == "quickstart"
    assert "2" in row and "4" in row  # min and max

    explained = devcluster.kubectl("explain", "stj.spec.placement.pools.capacityType")
    assert "spot or on-demand" in explained
    explained = devcluster.kubectl("explain", "stj.spec.termination.safetyMargin")
    assert "deadline minus this margin" in explained


def test_scale_subresource_sets_target(devcluster: DevCluster, namespace: str) -> None:
    assert apply(devcluster, namespace, QUICKSTART).returncode == 0
    devcluster.kubectl("scale", "stj", "quickstart", "-n", namespace, "--replicas=3")
    stored = json.loads(devcluster.kubectl("get", "stj", "quickstart", "-n", namespace, "-o", "json"))
    assert stored["spec"]["elastic"]["targetNodes"] == 3
    result = devcluster.kubectl_run("scale", "stj", "quickstart", "-n", namespace, "--replicas=7")
    assert result.returncode != 0
    assert "spec.elastic.targetNodes" in result.stderr
