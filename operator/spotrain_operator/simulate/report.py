"""The simulation's outputs: a table for the terminal, a JSON document, and PNG plots (with matplotlib)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spotrain_operator.simulate.compare import Comparison

COLUMNS = (
    ("policy", "policy", "{}"),
    ("goodput", "goodput", "{:.3f}"),
    ("throughput_vs_on_demand", "thruput/OD", "{:.3f}"),
    ("cost_ratio", "cost/step vs OD", "{:.3f}"),
    ("completion_h", "done (h)", "{:.2f}"),
    ("interruptions", "interruptions", "{}"),
    ("lost_steps_per_interruption_p50", "lost P50", "{:.0f}"),
    ("lost_steps_per_interruption_p95", "lost P95", "{:.0f}"),
)


def table(comparisons: Sequence[Comparison]) -> str:
    lines = []
    for c in comparisons:
        m = c.market
        lines.append(f"{m.name}: {m.job_nodes} nodes on {m.cloud} ({m.notice_s:.0f} s notice), "
                     f"{m.preemptions_per_node_hour} preemptions/node-hour, {c.work_hours:g} h of full-size work, "
                     f"seed {c.seed}")
        rows = [[header for _, header, _ in COLUMNS]]
        for name in c.results:
            s = {"policy": name, **c.summary(name)}
            cells = []
            for key, _, fmt in COLUMNS:
                value = s.get(key)
                cells.append("-" if value is None else fmt.format(value))
            if not s["completed"]:
                cells[4] += " (not done)"
            rows.append(cells)
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        for r in rows:
            lines.append("  " + "  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i])
                                          for i, cell in enumerate(r)))
        lines.append("")
    return "\n".join(lines)


def sweep_table(market: str, rows: list[dict[str, Any]]) -> str:
    names = [k for k in rows[0] if k not in ("factor", "rescale_s")] if rows else []
    lines = [f"{market}: per-event overhead what-if (stop + rendezvous + restart + restore + first step, "
             "failure detection, notice checkpoint scaled together)"]
    lines.append("  factor  rescale (s)  " + "  ".join(f"{n} goodput / cost" for n in names))
    for r in rows:
        cells = "  ".join(f"{r[n]['goodput']:.3f} / {r[n]['cost_ratio'] if r[n]['cost_ratio'] is not None else '-'}"
                          .ljust(len(n) + 17) for n in names)
        lines.append(f"  x{r['factor']:<5g} {r['rescale_s']:>11.1f}  {cells}")
    return "\n".join(lines)


BIN_S = 600.0


def binned_world(world: list[tuple[float, int]], end: float, bin_s: float) -> tuple[list[float], list[float]]:
    """The world-size step function averaged over bins of ``bin_s`` seconds (hours, mean size per bin)."""
    xs, ys = [], []
    points = [*world, (end, 0)]
    start = 0.0
    while start < end:
        stop = min(end, start + bin_s)
        area = 0.0
        for (t, size), (t_next, _) in itertools.pairwise(points):
            overlap = min(stop, t_next) - max(start, t)
            if overlap > 0:
                area += overlap * size
        xs.append(start / 3600.0)
        ys.append(area / (stop - start))
        start = stop
    return xs, ys


def plots(comparisons: Sequence[Comparison], sweeps: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    """goodput.png and cost.png (by policy and market), world-<market>.png (world size over time),
    sweep-<market>.png. Returns the files written; none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    policies = list(dict.fromkeys(n for c in comparisons for n in c.results))
    markets = [c.market.name for c in comparisons]
    for metric, label, filename in (("goodput", "goodput (committed / paid node-seconds)", "goodput.png"),
                                    ("cost_ratio", "cost per committed step vs on-demand", "cost.png")):
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(policies))
        for i, name in enumerate(policies):
            values = [float(c.summary(name).get(metric) or 0.0) if name in c.results else 0.0 for c in comparisons]
            ax.bar([x + i * width for x in range(len(markets))], values, width, label=name)
        ax.set_xticks([x + width * (len(policies) - 1) / 2 for x in range(len(markets))], markets)
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(out / filename, dpi=100)
        plt.close(fig)
        written.append(out / filename)
    for c in comparisons:
        fig, axes = plt.subplots(len(c.results), 1, figsize=(9, 1.6 * len(c.results) + 1), sharex=True, squeeze=False)
        for ax, (name, r) in zip(axes[:, 0], c.results.items(), strict=True):
            xs, ys = binned_world(r.world, r.elapsed_s, BIN_S)
            ax.step(xs, ys, where="post", linewidth=0.8)
            ax.set_ylim(0, c.market.job_nodes * 1.1)
            ax.set_ylabel(name, fontsize="small")
        axes[-1, 0].set_xlabel(f"hours (mean world size per {BIN_S / 60:.0f} minutes)")
        axes[0, 0].set_title(f"{c.market.name}: nodes training")
        fig.tight_layout()
        path = out / f"world-{c.market.name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    for market, rows in sweeps.items():
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        names = [k for k in rows[0] if k not in ("factor", "rescale_s")]
        for name in names:
            ax.plot([r["rescale_s"] for r in rows], [r[name]["goodput"] for r in rows], marker="o", label=name)
        ax.set_xlabel("seconds per rescale")
        ax.set_ylabel("goodput")
        ax.set_title(f"{market}: what a faster rescale buys")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"sweep-{market}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
