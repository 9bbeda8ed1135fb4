"""A grid's point chosen per task and method, as a paper's table needs it (`lrpt table --select FIELD...`).

A sweep over a grid (`lrpt sweep --grid learning_rate=0.3,0.1 rank=4,10`) leaves one run per point and
seed. The table's cell for a task and method is the point whose prompts scored best on the dev split
(carved from train, `--selection dev`), reported by its validation score: nothing reported chose it. The
choice on the validation scores themselves (`--select_on val`) is the optimistic one some papers make;
it stays available and is marked as such.
"""
from __future__ import annotations

import statistics

DEV, VAL = "dev", "val"
OPTIMISTIC_MARK = " (point best on val)"
OPTIMISTIC_NOTE = ("(point best on val): the grid point whose prompts scored best on this very validation split "
                   "(--select_on val); optimistic next to a point chosen on dev.")


class SelectionError(ValueError):
    """Runs that cannot be selected among as asked, said in one line."""


def point_of(record: dict, fields: list[str]) -> tuple:
    """The record's values of `fields`, from the settings its report recorded."""
    missing = [f for f in fields if f not in record["config"]]
    if missing:
        raise SelectionError(f"{record['path']}: its settings have no {', '.join(missing)} (a field of "
                             "`lrpt train --help`, as --grid names it)")
    return tuple(record["config"][f] for f in fields)


def label(fields: list[str], point: tuple) -> str:
    return " ".join(f"{f}={v}" for f, v in zip(fields, point))


def select(records: list[dict], fields: list[str], on: str = DEV) -> tuple[list[dict], dict[tuple, str]]:
    """Per (K, model, method, task): the records of the point with the best mean score on `on` over its runs
    (the first listed on a tie). Returns the records kept, and per (K, model, method, task) the winner said
    in words."""
    if on not in (DEV, VAL):
        raise SelectionError(f"--select_on must be dev or val, got {on!r}")
    cells: dict[tuple, dict[tuple, list[dict]]] = {}
    for r in records:
        if on == DEV and r["dev_score"] is None:
            raise SelectionError(f"{r['path']}: no dev score (trained with --selection {r['protocol']}); --select "
                                 "chooses on the dev split: train the grid with --selection dev, or choose on "
                                 "validation with --select_on val (optimistic, and marked so)")
        cell = (r["few_shot"], r["model"], r["method"], r["task"])
        cells.setdefault(cell, {}).setdefault(point_of(r, fields), []).append(r)
    kept, winners = [], {}
    for cell, points in cells.items():
        scores = {p: statistics.mean(r["dev_score" if on == DEV else "score"] for r in runs)
                  for p, runs in points.items()}
        best = max(scores, key=scores.get)
        kept += points[best]
        winners[cell] = (f"{label(fields, best)} ({on} {100 * scores[best]:.1f}, mean of {len(points[best])} "
                         f"run{'s' if len(points[best]) > 1 else ''}; {len(points)} points)")
    return kept, winners
