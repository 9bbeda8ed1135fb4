"""Table layouts: which task columns `lrpt table` shows, in which order, and which number a cell is.

Papers that look alike report different numbers: lrpt's own table scores a task by `Task.score`
(CB the mean of accuracy and macro-F1, MultiRC of F1a and EM, ReCoRD of F1 and EM), while DPT's
Table 1 (arXiv 2310.10094), which the prompt-tuning papers copy, reports CB accuracy, MultiRC F1a
and ReCoRD F1 alone, in its own column order. A layout fixes both, and every header says its
metric, so a number is never read against a table that measured something else.

    lrpt   the tasks present, in the benchmark's order; cell = Task.score; "Params", "Avg"
    dpt    DPT Table 1: all eight tasks in its order; cell = the metric it names; "# Trainable Params."
    dept   DePT (arXiv 2309.05173) Table 1's SuperGLUE part: MultiRC, BoolQ, WiC, WSC, CB; MultiRC F1a, the others
           accuracy (CB too); "Mean", one decimal as it prints

A paper's layout names its `published.Paper`, whose rows `--reference` sets beside ours.
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
# the one metric DePT's Table 1 reports per task (its src/tasks.py and src/metrics.py: MultiRC's F1 is over every
# answer, lrpt's f1a; CB's number is accuracy, not its F1)
DEPT_KEYS: dict[str, str] = {"multirc": "f1a", "boolq": "accuracy", "wic": "accuracy", "wsc": "accuracy",
                             "cb": "accuracy"}


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
    paper: published.Paper | None = None  # whose published rows --reference adds (None: no --reference)

    def shown(self, tasks_present: set[str]) -> list[Column]:
        """The columns of a table whose runs cover `tasks_present`."""
        return [c for c in self.columns if self.every_column or c.task in tasks_present]


def _formula(keys: tuple[str, ...]) -> str:
    """("accuracy", "macro_f1") -> "(acc+F1)/2": what the header says the cell is."""
    names = [METRIC_NAMES.get(k, k) for k in keys]
    return f"({names[0]})" if len(names) == 1 else f"({'+'.join(names)})/{len(names)}"


def _paper_columns(paper: published.Paper, keys: dict[str, str]) -> tuple[Column, ...]:
    """The paper's tasks in its order, each cell the one metric it reports for the task."""
    return tuple(Column(t, f"{TASKS[t].dir_name} {_formula((keys[t],))}", itemgetter(keys[t])) for t in paper.tasks)


LRPT = Layout(
    name="lrpt",
    columns=tuple(Column(t, f"{TASKS[t].dir_name} {_formula(SCORE_KEYS[t])}", TASKS[t].score) for t in TASKS),
    every_column=False, params_label="Params", avg_label="Avg", decimals=1, compact_params=False)

DPT = Layout(
    name="dpt", columns=_paper_columns(published.DPT, DPT_KEYS),
    every_column=True, params_label="# Trainable Params.", avg_label="Avg.", decimals=2, compact_params=True,
    paper=published.DPT)

# exact counts: "77K" beside the paper's "76.8K" would read as a different count
DEPT = Layout(
    name="dept", columns=_paper_columns(published.DEPT, DEPT_KEYS),
    every_column=True, params_label="Params", avg_label="Mean", decimals=1, compact_params=False,
    paper=published.DEPT)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (LRPT, DPT, DEPT)}
