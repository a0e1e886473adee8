"""make bench: every benchmark (each writes JSON to bench/results/), then bench/results.json with stable keys
(documented in docs/benchmarks.md) and one readable table.

    python bench/run.py [--only checkpoint,operator,rescale,simulation]

Benchmarks not run this time keep the values of their last run in bench/results/ (``sources`` in results.json
says when each was measured). Progress goes to stderr while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RESULTS_JSON = HERE / "results.json"
SCHEMA = 1
# Order matters: the simulation uses the rescale phases measured just before.
BENCHES: list[tuple[str, list[str]]] = [
    ("checkpoint", [str(HERE / "checkpoint_bench.py")]),
    ("operator", [str(HERE / "operator_bench.py")]),
    ("rescale", [str(HERE / "rescale_bench.py")]),
    ("simulation", [str(HERE / "simulation_bench.py"), "--costs", str(RESULTS / "rescale.json")]),
    ("soak", [str(HERE / "soak_bench.py")]),
    ("coordination", [str(HERE / "coordination_bench.py")]),
]
SCENARIOS = ("aws_32n_0.6ph", "aws_8n_0.06ph", "gcp_32n_0.6ph")
POLICIES = ("on_demand", "baseline_ckpt30", "elastic_no_notice", "spotrain")
GB_ROW_MB = 1024


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _round(value: Any, digits: int = 4) -> Any:
    return round(float(value), digits) if isinstance(value, int | float) else None


def operator_keys(r: dict[str, Any]) -> dict[str, Any]:
    """operator_bench's result, whichever of its two formats (flat seconds, or the older milliseconds)."""
    if "reaction_p50_s" in r:
        return {"reaction_p50_s": _round(r.get("reaction_p50_s")), "reaction_p99_s": _round(r.get("reaction_p99_s")),
                "zone_loss_converge_s": _round(r.get("zone_loss_converge_p50_s", r.get("zone_loss_converge_s"))),
                "zone_loss_converge_worst_s": _round(r.get("zone_loss_converge_worst_s")),
                "rss_mb": _round(r.get("rss_mb"), 1)}
    reaction = r.get("reaction_ms") or {}
    zone = r.get("zone_loss") or {}
    return {"reaction_p50_s": _round((reaction.get("p50") or 0) / 1000.0) if "p50" in reaction else None,
            "reaction_p99_s": _round((reaction.get("p99") or 0) / 1000.0) if "p99" in reaction else None,
            "zone_loss_converge_s": _round(zone.get("converge_seconds")), "zone_loss_converge_worst_s": None,
            "rss_mb": _round(r.get("rss_mb"), 1)}


def trainer_keys(r: dict[str, Any]) -> dict[str, Any]:
    """1 GiB of state: stalls on local disk, notice -> durable on (moto) S3 when measured, else local."""
    rows = [row for row in r.get("results", []) if row.get("size_mb") == GB_ROW_MB]
    local = next((row for row in rows if row.get("storage") == "local"), None)
    remote = next((row for row in rows if row.get("storage") == "s3-moto"), None) or local
    if local is None or remote is None:
        return {}
    sync, asynchronous = local.get("sync_stall_s"), local.get("async_stall_s")
    return {"stall_async_s": _round(asynchronous), "stall_sync_s": _round(sync),
            "async_stall_vs_sync": _round(asynchronous / sync) if asynchronous and sync else None,
            "notice_to_durable_s": _round(remote.get("notice_notice_to_durable_s")),
            "notice_to_durable_storage": remote.get("storage"), "state_mb": GB_ROW_MB}


def rescale_keys(r: dict[str, Any]) -> dict[str, Any]:
    phases = r.get("phases") or {}

    def value(kind: str, key: str, q: str) -> Any:
        return _round(((phases.get(kind) or {}).get(key) or {}).get(q), 3)

    out = {
        "notice_to_first_step_p50_s": value("notice", "to_first_step_s", "p50"),
        "notice_to_first_step_p95_s": value("notice", "to_first_step_s", "p95"),
        "notice_steps_lost_p95": value("notice", "steps_lost", "p95"),
        "join_to_first_step_p50_s": value("join", "to_first_step_s", "p50"),
        "join_to_first_step_p95_s": value("join", "to_first_step_s", "p95"),
        "no_notice_to_first_step_p50_s": value("no_notice", "to_first_step_s", "p50"),
        "no_notice_steps_lost_p50": value("no_notice", "steps_lost", "p50"),
        "rendezvous_loss_to_first_step_p50_s": value("rendezvous_loss", "to_first_step_s", "p50"),
        "store_move_to_first_step_p50_s": value("store_move", "to_first_step_s", "p50"),
        "store_move_steps_lost_p95": value("store_move", "steps_lost", "p95"),
        "repeats": r.get("repeats"),
    }
    for phase in ("stop_and_rendezvous", "import", "process_group", "restore", "first_step"):
        out[f"notice_{phase}_p50_s"] = value("notice", f"{phase}_s", "p50")
    return out


def coordination_keys(r: dict[str, Any]) -> dict[str, Any]:
    """The per-step notice-flag all-reduce over the session's gloo group, on loopback (microseconds)."""
    return {f"world_{w}_{q}_us": (r.get(f"world_size_{w}") or {}).get(f"{q}_us")
            for w in (2, 8) for q in ("p50", "p99")}


def soak_keys(r: dict[str, Any]) -> dict[str, Any]:
    found = {k: len(r.get(k) or []) for k in ("duplicates", "orphans", "double_evictions", "late_drains")}
    return {"kills": r.get("kills"), "apiserver_restarts": r.get("apiserver_restarts"), "notices": r.get("notices"),
            **found, "clean": r.get("clean")}


def simulation_keys(r: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        policies = ((r.get("scenarios") or {}).get(scenario) or {}).get("policies") or {}
        out[scenario] = {p: {k: policies.get(p, {}).get(k) for k in ("goodput", "cost_ratio",
                                                                      "throughput_vs_on_demand", "completed")}
                         for p in POLICIES}
    sweep = (r.get("sweep") or {}).get("aws_32n_0.6ph")
    if sweep:
        out["sweep_aws_32n_0.6ph"] = [{"rescale_s": row["rescale_s"], "spotrain_goodput": row["spotrain"]["goodput"]}
                                      for row in sweep]
    return out


def goals(doc: dict[str, Any]) -> dict[str, Any]:
    """Where spotrain stands against issue 10's goals (the simulator is not tuned to them)."""
    aws = (doc.get("simulation") or {}).get("aws_32n_0.6ph") or {}
    spotrain, baseline = aws.get("spotrain") or {}, aws.get("baseline_ckpt30") or {}
    goodput, base = spotrain.get("goodput"), baseline.get("goodput")
    cost = spotrain.get("cost_ratio")
    notice = (doc.get("rescale") or {}).get("notice_to_first_step_p50_s")

    def check(value: Any, ok: bool) -> dict[str, Any]:
        return {"value": value, "met": ok if value is not None else None}

    return {
        "aws_32n_0.6ph_spotrain_goodput_ge_0.90": check(goodput, goodput is not None and goodput >= 0.90),
        "aws_32n_0.6ph_spotrain_goodput_ge_3x_baseline": check(
            None if goodput is None or base is None else round(goodput / base, 2) if base else float("inf"),
            goodput is not None and base is not None and goodput >= 3 * base),
        "aws_32n_0.6ph_cost_per_step_le_0.45x_on_demand": check(cost, cost is not None and cost <= 0.45),
        "notice_to_first_step_le_10s": check(notice, notice is not None and notice <= 10.0),
    }


def collect() -> dict[str, Any]:
    doc: dict[str, Any] = {"schema": SCHEMA, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                       "python": platform.python_version(), "load_average": os.getloadavg()},
                           "sources": {}}
    for name, keys in (("simulation", simulation_keys), ("operator", operator_keys), ("checkpoint", trainer_keys),
                       ("rescale", rescale_keys), ("soak", soak_keys), ("coordination", coordination_keys)):
        result = _load(name)
        section = "trainer" if name == "checkpoint" else name
        doc[section] = keys(result) if result else {}
        doc["sources"][section] = {"file": f"bench/results/{name}.json",
                                   "measured": (result or {}).get("time")} if result else None
    doc["goals"] = goals(doc)
    return doc


def table(doc: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for scenario in SCENARIOS:
        for policy, values in (doc.get("simulation") or {}).get(scenario, {}).items():
            if values.get("goodput") is not None:
                rows.append((f"simulation {scenario} {policy}", f"goodput {values['goodput']}, "
                             f"cost/step vs on-demand {values['cost_ratio']}"))
    for section in ("operator", "trainer", "rescale", "soak", "coordination"):
        for key, value in (doc.get(section) or {}).items():
            if value is not None:
                rows.append((f"{section}.{key}", json.dumps(value)))
    for key, value in doc["goals"].items():
        met = {True: "met", False: "NOT met", None: "not measured"}[value["met"]]
        rows.append((f"goal {key}", f"{value['value']} ({met})"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", type=lambda s: s.split(","), default=[name for name, _ in BENCHES],
                   help="benchmarks to run (the others' last results are reused)")
    args = p.parse_args(argv)
    unknown = set(args.only) - {name for name, _ in BENCHES}
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; known: {', '.join(n for n, _ in BENCHES)}")
    RESULTS.mkdir(exist_ok=True)
    failed = []
    chosen = [(name, cmd) for name, cmd in BENCHES if name in args.only]
    for i, (name, command) in enumerate(chosen, start=1):
        started = time.monotonic()
        print(f"[bench] ({i}/{len(chosen)}) {name} ...", file=sys.stderr, flush=True)
        code = subprocess.run([sys.executable, *command], cwd=HERE.parent).returncode
        took = time.monotonic() - started
        if code != 0:
            failed.append(name)
        print(f"[bench] ({i}/{len(chosen)}) {name} {'failed' if code else 'done'} in {took:.0f} s",
              file=sys.stderr, flush=True)
    doc = collect()
    RESULTS_JSON.write_text(json.dumps(doc, indent=1) + "\n")
    rows = table(doc)
    width = max((len(k) for k, _ in rows), default=10)
    print()
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print(f"\nwritten {RESULTS_JSON}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
