"""A development split carved out of the official training rows.

The papers report the official validation split as their test set, so it cannot also choose the
best checkpoint or stop training early without leaking. `carve_dev` holds out a fixed part of the
training rows for that; train on the rest. Carving whole official rows keeps a MultiRC paragraph
(or ReCoRD passage) on one side, so dev questions never share a passage with training ones.
"""
from __future__ import annotations

import random

import datasets

from lrpt.eval.fewshot import stable_seed


def carve_dev(rows: datasets.Dataset, size: int | float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train', dev): disjoint, together exactly `rows`, each in file order. `size` is a row count
    (an int, or a whole float above 1) or a fraction of the rows (float in (0, 1), rounded, at
    least 1 row). The same rows and seed always give the same split."""
    n = len(rows)
    if isinstance(size, float) and size > 1 and size.is_integer():
        size = int(size)          # a row count that came through a float-typed option
    if isinstance(size, float):
        if not 0 < size < 1:
            raise ValueError(f"a fractional dev size must be in (0, 1), got {size}")
        size = max(1, round(size * n))
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < n:
        raise ValueError(f"dev size must leave both parts non-empty: 1 <= size < {n}, got {size!r}")
    order = list(range(n))
    random.Random(stable_seed("dev", seed)).shuffle(order)
    return rows.select(sorted(order[size:])), rows.select(sorted(order[:size]))
