"""A development split carved out of the official training rows.

The papers report the official validation split as their test set, so it cannot also choose the
best checkpoint or stop training early without leaking. `carve_dev` holds out a fixed part of the
training rows for that; train on the rest. Carving whole official rows keeps a MultiRC paragraph
(or ReCoRD passage) on one side, so dev questions never share a passage with training ones.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # RunConfig.validate reads `dev_size` without loading `datasets`
    import datasets


def dev_size(size: int | float) -> int | float:
    """`size` as carve_dev reads it, before any row is read: a row count (an int, or a whole float above 1)
    or a fraction of the rows (a float in (0, 1)); a ValueError saying what to give otherwise."""
    if isinstance(size, float) and size > 1 and size.is_integer():
        return int(size)          # a row count that came through a float-typed option
    fraction = isinstance(size, float) and 0 < size < 1   # NaN is neither
    count = isinstance(size, int) and not isinstance(size, bool) and size >= 1
    if not (fraction or count):
        raise ValueError(f"give a fraction of the training rows in (0, 1), such as 0.1, or a whole number of rows "
                         f"above 1, such as 100; got {size!r}")
    return size


def carve_dev(rows: datasets.Dataset, size: int | float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train', dev): disjoint, together exactly `rows`, each in file order. `size` is a row count
    (an int, or a whole float above 1) or a fraction of the rows (float in (0, 1), rounded, at
    least 1 row). The same rows and seed always give the same split."""
    from .fewshot import stable_seed

    n, size = len(rows), dev_size(size)
    if isinstance(size, float):
        size = max(1, round(size * n))
    if not size < n:
        raise ValueError(f"a dev split of {size} row(s) leaves none of the {n} training rows to train on; "
                         f"carve fewer than {n} rows, or a fraction such as 0.1")
    order = list(range(n))
    random.Random(stable_seed("dev", seed)).shuffle(order)
    return rows.select(sorted(order[size:])), rows.select(sorted(order[:size]))
