"""make bench: every benchmark, each writing JSON to bench/results/, then one readable table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHES = [("checkpoint", HERE / "checkpoint_bench.py"), ("operator", HERE / "operator_bench.py")]


def rows(name: str, result: dict) -> list[tuple[str, str]]:
    if name == "operator":
        r = result["reaction_ms"]
        return [
            (f"operator: bring-up of {result['jobs']} jobs on {result['nodes']} nodes",
             f"{result['bring_up_seconds']} s"),
            (f"operator: notice -> checkpoint request (n={r['samples']})", f"p50 {r['p50']} ms, p99 {r['p99']} ms"),
            (f"operator: converge after zone loss ({result['zone_loss']['nodes_removed']} nodes)",
             f"{result['zone_loss']['converge_seconds']} s"),
        ]
    return [(f"{name}: {key}", json.dumps(value)) for key, value in result.items() if not isinstance(value, list)]


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    failed = []
    table: list[tuple[str, str]] = []
    for name, script in BENCHES:
        print(f"[bench] {name}", file=sys.stderr, flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(name)
            continue
        result_file = RESULTS / f"{name}.json"
        if result_file.exists():
            table.extend(rows(name, json.loads(result_file.read_text())))
    width = max((len(k) for k, _ in table), default=10)
    print()
    for key, value in table:
        print(f"{key.ljust(width)}  {value}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
