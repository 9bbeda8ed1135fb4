"""Published SuperGLUE numbers that `lrpt table --layout dpt --reference` sets beside ours.

Source: Xiao et al., "Decomposed Prompt Tuning via Low-Rank Reparameterization" (DPT),
arXiv 2310.10094, Table 1 (means over 3 seeds, SuperGLUE validation, ×100) and Table 3 (standard
deviations over those seeds, %). Prompt length c = 100, DPT bottleneck b = 10, Residual PT
bottleneck 400, on the original T5 checkpoints (t5-small, t5-base, t5-large). The Fine-tuning rows
marked * (T5-Base, T5-Large) are the paper's quotes of Aribandi et al. 2022 and have no std; the
other rows the DPT authors reproduced. Columns (`TASKS`): WSC, WiC, BoolQ, CB, COPA accuracy,
MultiRC F1 over answers (F1a), ReCoRD F1, RTE accuracy; Avg. is the paper's, as printed (T5-Base
DPT's 71.88 is 0.04 below the mean of its eight cells, 71.92: a discrepancy in the paper, kept).

Numbers are copied here by hand, not computed; change them only against the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

# lrpt task names, in the paper's column order
TASKS: tuple[str, ...] = ("wsc", "wic", "boolq", "cb", "copa", "multirc", "record", "rte")
SOURCE = "DPT (arXiv 2310.10094) Table 1 (means) and Table 3 (std)"

# the paper's backbone name -> the hub names of the checkpoint it ran
BACKBONES: dict[str, tuple[str, ...]] = {
    "T5-Small": ("t5-small", "google-t5/t5-small"),
    "T5-Base": ("t5-base", "google-t5/t5-base"),
    "T5-Large": ("t5-large", "google-t5/t5-large"),
}

# the paper's method name -> lrpt's (None: not an lrpt method, shown for context only)
METHODS: dict[str, str | None] = {"Fine-tuning": None, "Fine-tuning*": None, "Prompt Tuning": "pt",
                                  "Residual PT": "residual", "DPT": "dpt"}


@dataclass(frozen=True)
class PublishedRow:
    """One row of the paper: means (and std where Table 3 has them) per task in `TASKS` order."""
    backbone: str
    method: str
    params: str                          # as printed: "77K"
    means: tuple[float, ...]
    avg: float
    stds: tuple[float, ...] | None = None

    @property
    def lrpt_method(self) -> str | None:
        return METHODS[self.method]


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

ROWS: tuple[PublishedRow, ...] = tuple(
    PublishedRow(backbone, method, params, means, avg, _TABLE3.get((backbone, method)))
    for backbone, method, params, means, avg in _TABLE1)


def backbone_of(model: str) -> str | None:
    """The paper's backbone a hub name (or the paper's own spelling, "T5-Base") denotes; None when
    it is none of them. A local path is never guessed from: it may hold any weights."""
    name = model.strip().rstrip("/").lower()
    for backbone, hub_names in BACKBONES.items():
        if name == backbone.lower() or name in hub_names:
            return backbone
    return None


def rows_for(backbone: str) -> list[PublishedRow]:
    """The paper's rows for one backbone, in its order."""
    return [row for row in ROWS if row.backbone == backbone]
