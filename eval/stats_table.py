"""The few-shot statistics of a table's runs (eval.stats) as markdown, CSV and a plot per task."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from .stats import CellStats, Paired, cell_stats, paired

Cell = tuple[int, str, str]  # (K, method, task)


@dataclass
class FewShotStats:
    cells: dict[Cell, CellStats] = field(default_factory=dict)
    pairs: dict[tuple[int, str, str, str], Paired] = field(default_factory=dict)  # (K, task, method a, method b)

    def __bool__(self) -> bool:
        return bool(self.cells)


def few_shot_stats(scores: dict[Cell, dict[tuple, float]]) -> FewShotStats:
    """`scores`: per few-shot cell, (draw, seed) -> the table's number (x100). Methods are paired in the order
    they are listed."""
    out = FewShotStats({cell: cell_stats(runs) for cell, runs in scores.items()})
    for (k, task) in dict.fromkeys((k, task) for k, _, task in scores):
        methods = [m for kk, m, t in scores if (kk, t) == (k, task)]
        for a, b in combinations(methods, 2):
            difference = paired(scores[(k, a, task)], scores[(k, b, task)])
            if difference is not None:
                out.pairs[(k, task, a, b)] = difference
    return out


def _number(x: float | None, decimals: int = 1) -> str:
    return "" if x is None else f"{x:.{decimals}f}"


def _ci(low: float | None, high: float | None) -> str:
    return "–" if low is None else f"[{low:.1f}, {high:.1f}]"


def _share(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def markdown(stats: FewShotStats) -> str:
    lines = ["Few-shot statistics per cell: mean, sample std, the mean's 95% bootstrap interval over runs, and the "
             "variance's split between data draws and seeds within a draw (law of total variance).", "",
             "| K | Method | Task | runs | mean | std | 95% CI | draws | seeds |",
             "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for (k, method, task), c in stats.cells.items():
        lines.append(f"| {k} | {method} | {task} | {c.runs} | {c.mean:.1f} | {_number(c.std) or '–'} | "
                     f"{_ci(c.low, c.high)} | {_share(c.draw_share)} | {_share(c.seed_share)} |")
    if stats.pairs:
        lines += ["", "Paired differences (run by run on the same draw and seed): mean of A − B and its 95% "
                      "bootstrap interval.", "", "| K | Task | A − B | pairs | mean | 95% CI |",
                  "|---|---|---|---:|---:|---|"]
        for (k, task, a, b), p in stats.pairs.items():
            lines.append(f"| {k} | {task} | {a} − {b} | {p.pairs} | {p.mean:+.1f} | {_ci(p.low, p.high)} |")
    return "\n".join(lines) + "\n"


def cells_csv(stats: FewShotStats) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["k", "method", "task", "runs", "mean", "std", "ci_low", "ci_high", "draw_share", "seed_share"])
    for (k, method, task), c in stats.cells.items():
        writer.writerow([k, method, task, c.runs, *(_number(x, 4) for x in (c.mean, c.std, c.low, c.high)),
                         *(_number(x, 4) for x in (c.draw_share, c.seed_share))])
    return out.getvalue()


def pairs_csv(stats: FewShotStats) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["k", "task", "method_a", "method_b", "pairs", "mean_difference", "ci_low", "ci_high"])
    for (k, task, a, b), p in stats.pairs.items():
        writer.writerow([k, task, a, b, p.pairs, *(_number(x, 4) for x in (p.mean, p.low, p.high))])
    return out.getvalue()


def plot(stats: FewShotStats, prefix: Path, labels: dict[str, str]) -> list[Path]:
    """One figure per task: the score against K, a line per method, its 95% interval as a band. `labels`: each
    task's column header (which metric the score is)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    written = []
    for task in dict.fromkeys(task for _, _, task in stats.cells):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method in dict.fromkeys(m for _, m, t in stats.cells if t == task):
            ks = sorted(k for k, m, t in stats.cells if (m, t) == (method, task))
            cells = [stats.cells[(k, method, task)] for k in ks]
            means = [c.mean for c in cells]
            if all(c.low is not None for c in cells):
                bars = [[m - c.low for m, c in zip(means, cells)], [c.high - m for m, c in zip(means, cells)]]
                line = ax.errorbar(ks, means, yerr=bars, marker="o", capsize=4, label=method)
                ax.fill_between(ks, [c.low for c in cells], [c.high for c in cells], alpha=0.2,
                                color=line.lines[0].get_color())
            else:
                ax.plot(ks, means, marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({k for k, _, t in stats.cells if t == task}),
                      labels=[str(k) for k in sorted({k for k, _, t in stats.cells if t == task})])
        ax.set_xlabel("K (training rows)")
        ax.set_ylabel(labels.get(task, task))
        ax.set_title(f"{task}: mean over draws and seeds, 95% interval")
        ax.legend()
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}.{task}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
