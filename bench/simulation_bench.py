"""The spot-economics simulation of the reference scenarios (``spotrain simulate``), for bench/results.json.

    python bench/simulation_bench.py [--seed 1] [--work-hours 8] [--costs bench/results/rescale.json]

Runs the four policies on ``aws_32n_0.6ph``, ``aws_8n_0.06ph`` and ``gcp_32n_0.6ph`` with the same seed and
trace per scenario, and the per-event overhead sweep on ``aws_32n_0.6ph``. Writes bench/results/simulation.json
(and the plots next to it). The costs are the simulator's defaults (measured by bench/rescale_bench.py); with
``--costs`` the phases of a fresh rescale_bench run replace them, so one ``make bench`` is self-consistent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from spotrain_operator.cli import REFERENCE_SCENARIOS
from spotrain_operator.simulate import market as markets
from spotrain_operator.simulate.compare import DEFAULT_SWEEP, DEFAULT_WORK_HOURS, compare, sweep
from spotrain_operator.simulate.costs import Costs
from spotrain_operator.simulate.policies import POLICIES
from spotrain_operator.simulate.report import plots, sweep_table, table

HERE = Path(__file__).resolve().parent
SWEPT = "aws_32n_0.6ph"


def costs_from(path: Path | None) -> Costs:
    """The simulator's costs, with the phases a rescale_bench run measured (its ``simulator_costs``)."""
    costs = Costs()
    if path is None or not path.exists():
        return costs
    measured = json.loads(path.read_text()).get("simulator_costs") or {}
    fields = {f.name for f in dataclasses.fields(Costs)}
    return dataclasses.replace(costs, **{k: float(v) for k, v in measured.items() if k in fields and v is not None})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work-hours", type=float, default=DEFAULT_WORK_HOURS)
    p.add_argument("--costs", type=Path, default=None, help="a rescale_bench result whose phases to use")
    p.add_argument("--out", type=Path, default=HERE / "results" / "simulation.json")
    args = p.parse_args(argv)
    costs = costs_from(args.costs)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[bench] simulation: {message} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    comparisons = [compare(markets.scenario(name), list(POLICIES), seed=args.seed, work_hours=args.work_hours,
                           costs=costs, progress=progress) for name in REFERENCE_SCENARIOS]
    rows = sweep(markets.scenario(SWEPT), DEFAULT_SWEEP, seed=args.seed, work_hours=args.work_hours, costs=costs,
                 progress=progress)
    print(table(comparisons))
    print(sweep_table(SWEPT, rows))
    document: dict[str, Any] = {
        "benchmark": "simulation",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
        "scenarios": {c.market.name: c.to_json() for c in comparisons},
        "sweep": {SWEPT: rows},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    written = plots(comparisons, {SWEPT: rows}, args.out.parent / "simulation")
    print(f"written {args.out}" + (f" and {len(written)} plots in {args.out.parent / 'simulation'}" if written else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
