"""Few-shot training sets: K official training rows, drawn the same way every time.

K counts *official rows*, not formatted examples. A row is the unit the data set was annotated
and released in, and sampling whole rows keeps a MultiRC question's answers (and a paragraph's
questions) together, so exact match per question stays meaningful and no question is seen half.
The price: the number of examples per K varies by task (a MultiRC paragraph yields a dozen or so
answers, a ReCoRD passage a few queries). Only rows the task trains on are drawn: for WSC, which
trains on its positive rows only, K means K positive rows, never fewer usable rows. On the HF hub
MultiRC and ReCoRD are already flattened (a row per answer / query); use the official jsonl where
the unit matters.

No label balancing: the sample keeps whatever label mix chance gives, as in the prompt-tuning
papers' few-shot protocol, instead of inventing a balanced distribution the task does not have.
"""
from __future__ import annotations

import random
import zlib

import datasets


def stable_seed(*parts: object) -> int:
    """A seed from strings and numbers that is the same in every process (Python's hash() of a
    str changes with PYTHONHASHSEED)."""
    return zlib.crc32("-".join(str(p) for p in parts).encode())


def sample_few_shot(rows: datasets.Dataset, task_name: str, k: int, seed: int,
                    usable: list[int] | None = None) -> datasets.Dataset:
    """K rows of `rows` (the official training split), in file order, drawn among `usable` (the indices of
    rows the task trains on: WSC's positive rows; default all), so that K rows always train. The draw
    depends only on (task_name, k, seed) and the rows themselves: not on global random state, hash seed,
    or the other runs of a sweep."""
    usable = list(range(len(rows))) if usable is None else usable
    if not 1 <= k <= len(usable):
        raise ValueError(f"{task_name}: cannot sample k={k} rows from {len(usable)} training rows "
                         f"(1 <= k <= {len(usable)})")
    rng = random.Random(stable_seed(task_name, k, seed))
    return rows.select(sorted(usable[i] for i in rng.sample(range(len(usable)), k)))
