"""Table layouts: which task columns `lrpt table` shows, in which order, and which number a cell is.

Papers that look alike report different numbers: lrpt's own table scores a task by `Task.score`
(CB the mean of accuracy and macro-F1, MultiRC of F1a and EM, ReCoRD of F1 and EM), while DPT's
Table 1 (arXiv 2310.10094), which the prompt-tuning papers copy, reports CB accuracy, MultiRC F1a
and ReCoRD F1 alone, in its own column order. A layout fixes both, and every header says its
metric, so a number is never read against a table that measured something else.

    lrpt   the tasks present, in the benchmark's order; cell = Task.score; "Params", "Avg"
    dpt    DPT Table 1: all eight tasks in its order; cell = the metric it names; "# Trainable Params."
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

from . import published
from .tasks import TASKS

# short names of the metric keys the tasks' `metrics()` return, for headers
METRIC_NAMES = {"accuracy": "acc", "macro_f1": "F1", "f1a": "F1a", "em": "EM", "f1": "F1"}
# what `Task.score` averages, per task (tests check this against Task.score itself)
SCORE_KEYS: dict[str, tuple[str, ...]] = {
    "boolq": ("accuracy",), "cb": ("accuracy", "macro_f1"), "copa": ("accuracy",), "multirc": ("f1a", "em"),
    "record": ("f1", "em"), "rte": ("accuracy",), "wic": ("accuracy",), "wsc": ("accuracy",)}
# the one metric DPT's Table 1 reports per task
DPT_KEYS: dict[str, str] = {
    "wsc": "accuracy", "wic": "accuracy", "boolq": "accuracy", "cb": "accuracy", "copa": "accuracy",
    "multirc": "f1a", "record": "f1", "rte": "accuracy"}


@dataclass(frozen=True)
class Column:
    """One task column: its header and how a run's metrics dict becomes the cell's number (in [0, 1]);
    `value` raises KeyError naming the metric a report lacks."""
    task: str
    label: str
    value: Callable[[dict[str, float]], float]


@dataclass(frozen=True)
class Layout:
    """A table's columns and conventions. `every_column`: show all columns even when no run has the
    task (a paper's table has fixed columns, and its Avg is over all of them)."""
    name: str
    columns: tuple[Column, ...]
    every_column: bool
    params_label: str
    avg_label: str
    decimals: int
    compact_params: bool                 # "77K" as the paper prints, instead of "76,800"

    def shown(self, tasks_present: set[str]) -> list[Column]:
        """The columns of a table whose runs cover `tasks_present`."""
        return [c for c in self.columns if self.every_column or c.task in tasks_present]


def _formula(keys: tuple[str, ...]) -> str:
    """("accuracy", "macro_f1") -> "(acc+F1)/2": what the header says the cell is."""
    names = [METRIC_NAMES.get(k, k) for k in keys]
    return f"({names[0]})" if len(names) == 1 else f"({'+'.join(names)})/{len(names)}"


LRPT = Layout(
    name="lrpt",
    columns=tuple(Column(t, f"{TASKS[t].dir_name} {_formula(SCORE_KEYS[t])}", TASKS[t].score) for t in TASKS),
    every_column=False, params_label="Params", avg_label="Avg", decimals=1, compact_params=False)

DPT = Layout(
    name="dpt",
    columns=tuple(Column(t, f"{TASKS[t].dir_name} {_formula((DPT_KEYS[t],))}", itemgetter(DPT_KEYS[t]))
                  for t in published.TASKS),
    every_column=True, params_label="# Trainable Params.", avg_label="Avg.", decimals=2, compact_params=True)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (LRPT, DPT)}

