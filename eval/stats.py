"""Few-shot statistics: what a table of K-shot runs over data draws and seeds is judged on.

A cell (task, method, K) holds one score per run, each run a (draw, seed): the K rows it saw and the
prompt's initialisation. Beside mean and std the cell gets a 95% percentile-bootstrap interval of its mean
(scipy.stats.bootstrap over the runs), and its variance split by the law of total variance: the share
between draws (the draws' means scattered around the cell's) and the share within them (seeds on one
draw). Two methods are compared paired, run by run on the same (draw, seed), with an interval of the mean
difference: what separates them on the same data, not across it.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class CellStats:
    runs: int
    mean: float
    std: float | None            # sample std (n - 1); None for one run
    low: float | None            # the mean's 95% bootstrap interval; None for one run or identical scores
    high: float | None
    draw_share: float | None     # share of the variance between draws; None where it cannot be split
    seed_share: float | None


@dataclass(frozen=True)
class Paired:
    pairs: int
    mean: float                  # mean of (a - b) over the runs both have
    low: float | None
    high: float | None


def interval(values: list[float]) -> tuple[float | None, float | None]:
    """The 95% percentile-bootstrap interval of the mean (seeded: the table is the same every time)."""
    import numpy as np
    from scipy.stats import bootstrap

    if len(values) < 2 or len(set(values)) == 1:
        return None, None
    result = bootstrap((np.asarray(values, dtype=float),), np.mean, confidence_level=CONFIDENCE,
                       n_resamples=RESAMPLES, method="percentile", random_state=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def variance_shares(by_draw: dict[object, list[float]]) -> tuple[float | None, float | None]:
    """(between draws, within draws) as shares of the cell's population variance: Var = Var(E[x|draw]) +
    E[Var(x|draw)], which holds exactly for the runs as they are (each draw weighted by its runs)."""
    values = [v for runs in by_draw.values() for v in runs]
    total = statistics.pvariance(values) if len(values) > 1 else 0.0
    if len(by_draw) < 2 or all(len(runs) == 1 for runs in by_draw.values()) or total == 0:
        return None, None  # one draw, or a draw per run (seed and draw confounded): nothing to split
    mean, n = statistics.fmean(values), len(values)
    between = sum(len(runs) * (statistics.fmean(runs) - mean) ** 2 for runs in by_draw.values()) / n
    return between / total, 1 - between / total


def cell_stats(runs: dict[tuple, float]) -> CellStats:
    """`runs`: (draw, seed) -> score."""
    values = list(runs.values())
    by_draw: dict[object, list[float]] = {}
    for (draw, _), value in runs.items():
        by_draw.setdefault(draw, []).append(value)
    low, high = interval(values)
    draw_share, seed_share = variance_shares(by_draw)
    return CellStats(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None,
                     low, high, draw_share, seed_share)


def paired(a: dict[tuple, float], b: dict[tuple, float]) -> Paired | None:
    """a - b over the (draw, seed) both have; None when they share none."""
    shared = [key for key in a if key in b]
    if not shared:
        return None
    differences = [a[key] - b[key] for key in shared]
    low, high = interval(differences)
    return Paired(len(shared), statistics.fmean(differences), low, high)
