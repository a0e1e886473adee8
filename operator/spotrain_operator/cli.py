"""``spotrain``: the user-facing command. ``spotrain simulate`` estimates what spot capacity saves and what
preemptions cost, by running spotrain's own decisions over a simulated (or replayed) spot market.

    spotrain simulate                                  # the three reference scenarios, all policies
    spotrain simulate --scenario aws_32n_0.6ph --policy spotrain --policy baseline_ckpt30 --work-hours 12
    spotrain simulate --scenario aws_32n_0.6ph --trace my-trace.csv   # replay a trace (format: --help-trace)
    spotrain simulate --state-gb 40 --bandwidth-gb-s 2                # a bigger model's checkpoints
    spotrain simulate --set fallback.returnToSpot=false --set elastic.scaleUpWindow=60s   # your job's settings
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from spotrain_operator.api import SpecError
from spotrain_operator.simulate import market as markets
from spotrain_operator.simulate.compare import DEFAULT_SWEEP, DEFAULT_WORK_HOURS, compare, sweep, trace_for
from spotrain_operator.simulate.costs import Costs
from spotrain_operator.simulate.policies import POLICIES, job_spec, parse_override
from spotrain_operator.simulate.report import plots, sweep_table, table

REFERENCE_SCENARIOS = ("aws_32n_0.6ph", "aws_8n_0.06ph", "gcp_32n_0.6ph")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write numbers separated by commas, e.g. 0.5,1,2") from None


def _cost_override(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    names = [f.name for f in dataclasses.fields(Costs)]
    if key not in names:
        raise argparse.ArgumentTypeError(f"--cost {text!r}: unknown cost {key!r}; known: {', '.join(names)}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cost {text!r}: {value!r} is not a number of seconds") from None


def _override(text: str) -> tuple[str, Any]:
    try:
        return parse_override(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--set {e}") from None


def _check_spec(market: markets.Market, overrides: list[tuple[str, Any]]) -> str | None:
    """Parses the spotrain policy's spec with the overrides before anything runs; the problem, if any."""
    try:
        job_spec(dataclasses.replace(POLICIES["spotrain"], spec_overrides=tuple(overrides)), market, market.job_nodes)
    except SpecError as e:
        return f"--set: {e}"
    except (ValueError, KeyError, TypeError) as e:
        # parse_spec trusts the CRD schema for types; a --set bypasses it, so name what was set.
        fields = ", ".join(f"spec.{path}" for path, _ in overrides)
        return (f"--set {fields}: the spec does not parse ({type(e).__name__}: {e}); give each field the type "
                "`kubectl explain stj.spec` shows")
    return None


def simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="simulate policies over a spot market with spotrain's own decisions",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", action="append", choices=sorted(markets.SCENARIOS),
                   help=f"market (repeatable; default: {', '.join(REFERENCE_SCENARIOS)})")
    p.add_argument("--policy", action="append", choices=sorted(POLICIES),
                   help="policy (repeatable; default: all; on_demand always runs, as the reference)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work-hours", type=float, default=DEFAULT_WORK_HOURS,
                   help="the job's work, in hours of full-size training (default %(default)s)")
    p.add_argument("--trace", type=Path, help="replay this CSV trace instead of generating one (one scenario)")
    p.add_argument("--write-trace", type=Path, help="write the generated trace as CSV (one scenario)")
    p.add_argument("--help-trace", action="store_true", help="describe the CSV trace format and the markets")
    p.add_argument("--state-gb", type=float, default=0.0, help="model + optimizer state to checkpoint (GB)")
    p.add_argument("--bandwidth-gb-s", type=float, default=1.0, help="checkpoint storage bandwidth (GB/s)")
    p.add_argument("--cost", action="append", type=_cost_override, default=[], metavar="NAME=SECONDS",
                   help="override one rescale cost (e.g. rendezvous_s=3); see the JSON's costs")
    p.add_argument("--set", action="append", type=_override, default=[], metavar="FIELD=VALUE", dest="spec_set",
                   help="change the spotrain policy's SpotTrainingJob spec (dotted path, YAML value; repeatable), "
                        "e.g. fallback.returnToSpot=false or placement.cooldown=10m")
    p.add_argument("--sweep", type=_floats, default=list(DEFAULT_SWEEP),
                   help="per-event overhead factors for the what-if sweep (default %(default)s)")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--out", type=Path, default=Path("spotrain-simulation"),
                   help="directory for simulation.json and the PNG plots (default %(default)s)")
    p.add_argument("--no-plots", action="store_true")


def run_simulate(args: argparse.Namespace) -> int:
    if args.help_trace:
        print(markets.__doc__)
        return 0
    names = args.scenario or list(REFERENCE_SCENARIOS)
    if (args.trace or args.write_trace) and len(names) != 1:
        print("spotrain simulate: --trace and --write-trace need exactly one --scenario (its pools, zones and "
              "prices describe the trace's market)", file=sys.stderr)
        return 2
    if args.work_hours <= 0 or args.bandwidth_gb_s <= 0 or args.state_gb < 0:
        print("spotrain simulate: --work-hours and --bandwidth-gb-s must be positive, --state-gb not negative",
              file=sys.stderr)
        return 2
    costs = dataclasses.replace(Costs(state_gb=args.state_gb, bandwidth_gb_s=args.bandwidth_gb_s),
                                **dict(args.cost))
    policies = args.policy or list(POLICIES)

    def progress(message: str) -> None:
        print(f"[simulate] {message}", file=sys.stderr, flush=True)

    comparisons, sweeps = [], {}
    for name in names:
        market = markets.scenario(name)
        try:
            trace = markets.load_csv(args.trace, market) if args.trace else trace_for(market, args.seed,
                                                                                      args.work_hours)
        except (OSError, markets.TraceError) as e:
            print(f"spotrain simulate: {e}", file=sys.stderr)
            return 2
        if args.write_trace:
            args.write_trace.write_text(markets.write_csv(trace))
        if args.spec_set:
            problem = _check_spec(market, args.spec_set)
            if problem:
                print(f"spotrain simulate: {problem}", file=sys.stderr)
                return 2
        comparisons.append(compare(market, policies, seed=args.seed, work_hours=args.work_hours, costs=costs,
                                   trace=trace, spotrain_spec=args.spec_set, progress=progress))
        if not args.no_sweep and args.sweep:
            sweeps[name] = sweep(market, args.sweep, seed=args.seed, work_hours=args.work_hours, costs=costs,
                                 trace=trace, spotrain_spec=args.spec_set, progress=progress)
    print(table(comparisons))
    for name, rows in sweeps.items():
        print(sweep_table(name, rows))
        print()
    args.out.mkdir(parents=True, exist_ok=True)
    document = {"scenarios": {c.market.name: {**c.to_json(), "sweep": sweeps.get(c.market.name, [])}
                              for c in comparisons}}
    (args.out / "simulation.json").write_text(json.dumps(document, indent=1) + "\n")
    written = [] if args.no_plots else plots(comparisons, sweeps, args.out)
    print(f"written {args.out / 'simulation.json'}" + (f" and {len(written)} plots" if written else
                                                       " (plots need matplotlib: pip install 'spotrain[simulate]')"
                                                       if not args.no_plots else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spotrain", description="spotrain: elastic PyTorch training on spot")
    sub = parser.add_subparsers(dest="command", required=True)
    simulate_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "simulate":
        return run_simulate(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
