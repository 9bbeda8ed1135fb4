"""Published SuperGLUE numbers that `lrpt table --reference` sets beside ours: one `Paper` per layout that has
one (eval/layouts.py), with the columns, backbones, methods and rows its table prints.

DPT: Xiao et al., "Decomposed Prompt Tuning via Low-Rank Reparameterization", arXiv 2310.10094, Table 1 (means
over 3 seeds, SuperGLUE validation, ×100) and Table 3 (standard deviations over those seeds, %). Prompt length
c = 100, DPT bottleneck b = 10, Residual PT bottleneck 400, on the original T5 checkpoints (t5-small, t5-base,
t5-large). The Fine-tuning rows marked * (T5-Base, T5-Large) are the paper's quotes of Aribandi et al. 2022 and
have no std; the other rows the DPT authors reproduced. Columns: WSC, WiC, BoolQ, CB, COPA accuracy, MultiRC F1
over answers (F1a), ReCoRD F1, RTE accuracy; Avg. is the paper's, as printed (T5-Base DPT's 71.88 is 0.04 below
the mean of its eight cells, 71.92: a discrepancy in the paper, kept).

DePT: Shi & Lipani, "DePT: Decomposed Prompt Tuning for Parameter-Efficient Fine-tuning", ICLR 2024, arXiv
2309.05173, Table 1's SuperGLUE part on T5-Base (76.8K trainable parameters), the DePT row alone. Columns, as its
code scores them (src/tasks.py, src/metrics.py): MultiRC F1 of label 1 over every question-answer pair (F1a; an
output that is neither label counts as the wrong label, where lrpt counts it as negative), BoolQ, WiC, WSC, CB
accuracy (not CB's F1); Mean is the paper's. The cells are the repository's checkpoints/superglue-*/
test_results.json rounded (github.com/ZhengxiangShi/DePT at f0266a7, added by 0367390 "add some checkpoints for
Table 1 in the paper": MultiRC test_f1 74.297, BoolQ test_accuracy 79.327, WiC 68.652, WSC 67.308, CB 92.857),
one run each, no std. That "test" split is half of SuperGLUE's validation split: for these small tasks
src/tasks.py (split_validation_test, on in the checkpoints' logs) shuffles the validation split (torch seed 42),
selects the checkpoint on one half and reports the other (CB 26/28, WSC 35/52, WiC 219/319, BoolQ 1297/1635 of
SuperGLUE's 56, 104, 638, 3270). lrpt scores the whole validation split: the same metric, comparable, but not
the same rows. (The MultiRC checkpoint ran max_length 348: 60·768 + 30·(348 + 768) = 79,560 parameters, not the
76.8K printed.)

Numbers are copied here by hand, not computed; change them only against the paper.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedRow:
    """One row of a paper: means (and std where it publishes them) per task in its `Paper.tasks` order."""
    backbone: str
    method: str
    params: str                          # as printed: "77K"
    means: tuple[float, ...]
    avg: float
    stds: tuple[float, ...] | None = None


@dataclass(frozen=True, eq=False)
class Paper:
    """A paper's SuperGLUE table, as much of it as `--reference` shows and as its messages name it. One object per
    paper, so equality is identity (and a layout holding one stays hashable despite the dicts)."""
    name: str                                   # "DPT"
    arxiv: str                                  # "2310.10094"
    table: str                                  # "Table 1"
    source: str                                 # the note under our table: "(paper) rows: {name} (arXiv ...) {source}"
    tasks: tuple[str, ...]                      # lrpt task names, in the paper's column order
    backbones: dict[str, tuple[str, ...]]       # the paper's backbone name -> the hub names of the checkpoint it ran
    methods: dict[str, str | None]              # the paper's method name -> lrpt's (None: shown for context only)
    rows: tuple[PublishedRow, ...]

    def __post_init__(self) -> None:
        """A row that does not fit the table is a typo in this file: refuse it at import, not in a table."""
        for row in self.rows:
            if (row.backbone not in self.backbones or row.method not in self.methods
                    or len(row.means) != len(self.tasks) or len(row.stds or self.tasks) != len(self.tasks)):
                raise ValueError(f"{self.name}: row {row.backbone} {row.method} does not fit its table")

    def ran(self) -> list[str]:
        """The hub name of each backbone the paper ran, in its order (what messages offer)."""
        return [hub_names[0] for hub_names in self.backbones.values()]

    def backbone_of(self, model: str) -> str | None:
        """The paper's backbone a hub name (or the paper's own spelling, "T5-Base") denotes; None when it is none
        of them. A local path is never guessed from: it may hold any weights."""
        name = model.strip().rstrip("/").lower()
        for backbone, hub_names in self.backbones.items():
            if name == backbone.lower() or name in hub_names:
                return backbone
        return None

    def rows_for(self, backbone: str) -> list[PublishedRow]:
        """The paper's rows for one backbone, in its order."""
        return [row for row in self.rows if row.backbone == backbone]

    def row_of(self, backbone: str, lrpt_method: str) -> PublishedRow | None:
        """The paper's row of an lrpt method on one backbone, None when it has none."""
        return next((row for row in self.rows_for(backbone) if self.methods[row.method] == lrpt_method), None)


_T5 = {"T5-Small": ("t5-small", "google-t5/t5-small"), "T5-Base": ("t5-base", "google-t5/t5-base"),
       "T5-Large": ("t5-large", "google-t5/t5-large")}

#                backbone    method           params  WSC    WiC    BoolQ  CB     COPA   MultiRC ReCoRD RTE   Avg.
_TABLE1 = (
    ("T5-Small", "Fine-tuning", "60M", (67.94, 68.18, 77.06, 89.28, 59.00, 66.98, 55.64, 72.56), 69.58),
    ("T5-Small", "Prompt Tuning", "51K", (63.14, 59.29, 66.78, 74.99, 58.33, 64.89, 52.75, 59.92), 62.51),
    ("T5-Small", "Residual PT", "462K", (63.14, 60.96, 73.35, 72.02, 56.66, 65.12, 53.08, 67.02), 63.91),
    ("T5-Small", "DPT", "6K", (63.78, 64.31, 71.74, 79.16, 58.00, 64.89, 53.27, 70.51), 65.70),
    ("T5-Base", "Fine-tuning*", "220M", (81.70, 69.30, 82.30, 91.70, 60.00, 76.90, 80.90, 84.50), 78.41),
    ("T5-Base", "Prompt Tuning", "77K", (64.74, 59.97, 62.18, 70.23, 56.33, 72.69, 71.84, 56.43), 64.30),
    ("T5-Base", "Residual PT", "693K", (67.94, 63.31, 80.00, 77.37, 56.66, 72.11, 72.21, 81.70), 71.41),
    ("T5-Base", "DPT", "9K", (67.30, 68.49, 78.64, 78.56, 56.66, 71.22, 72.53, 81.94), 71.88),
    ("T5-Large", "Fine-tuning*", "770M", (88.50, 73.50, 88.30, 94.30, 87.00, 85.40, 89.20, 90.60), 87.10),
    ("T5-Large", "Prompt Tuning", "102K", (76.52, 70.00, 84.09, 74.40, 62.00, 76.18, 84.51, 88.95), 77.08),
    ("T5-Large", "Residual PT", "925K", (70.50, 72.25, 85.04, 73.21, 62.66, 76.46, 84.36, 88.92), 76.67),
    ("T5-Large", "DPT", "11K", (79.16, 71.99, 84.76, 88.09, 62.33, 76.72, 84.46, 90.25), 79.72),
)

#                                     WSC   WiC   BoolQ  CB     COPA  MultiRC ReCoRD RTE
_TABLE3 = {
    ("T5-Small", "Prompt Tuning"): (1.10, 2.82, 1.28, 3.57, 1.15, 0.90, 0.30, 3.12),
    ("T5-Small", "Residual PT"): (1.10, 5.7, 1.64, 4.12, 0.57, 0.51, 0.22, 3.68),
    ("T5-Small", "DPT"): (0.55, 0.65, 0.85, 4.12, 4.35, 0.90, 0.15, 1.98),
    ("T5-Base", "Prompt Tuning"): (1.10, 6.30, 0.01, 1.02, 1.15, 0.24, 0.09, 0.20),
    ("T5-Base", "Residual PT"): (0.55, 3.68, 10.11, 10.46, 2.08, 0.20, 0.13, 1.50),
    ("T5-Base", "DPT"): (0.96, 1.33, 0.79, 6.43, 2.08, 0.46, 0.10, 1.30),
    ("T5-Large", "Prompt Tuning"): (1.92, 1.04, 0.82, 1.03, 0.00, 0.18, 0.09, 0.20),
    ("T5-Large", "Residual PT"): (3.08, 0.56, 0.13, 1.79, 1.52, 0.04, 0.17, 0.75),
    ("T5-Large", "DPT"): (1.46, 0.63, 0.27, 2.06, 2.51, 0.39, 0.15, 0.36),
}

DPT = Paper(
    name="DPT", arxiv="2310.10094", table="Table 1",
    source="Table 1 (means) and Table 3 (std); those marked * it quotes from Aribandi et al. 2022.",
    tasks=("wsc", "wic", "boolq", "cb", "copa", "multirc", "record", "rte"),
    backbones=_T5,
    methods={"Fine-tuning": None, "Fine-tuning*": None, "Prompt Tuning": "pt", "Residual PT": "residual",
             "DPT": "dpt"},
    rows=tuple(PublishedRow(backbone, method, params, means, avg, _TABLE3.get((backbone, method)))
               for backbone, method, params, means, avg in _TABLE1))

DEPT = Paper(
    name="DePT", arxiv="2309.05173", table="Table 1",
    source=("Table 1, one run per task, scored on a random half of each SuperGLUE validation split (ours: the "
            "whole split)."),
    tasks=("multirc", "boolq", "wic", "wsc", "cb"),
    backbones={"T5-Base": _T5["T5-Base"]},
    methods={"DePT": "dept"},
    #               backbone   method  params   MultiRC BoolQ WiC   WSC   CB    Mean
    rows=(PublishedRow("T5-Base", "DePT", "76.8K", (74.3, 79.3, 68.7, 67.3, 92.9), 76.5),))
