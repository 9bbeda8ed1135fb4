"""Load a task split from a local SuperGLUE directory, the bundled demo data, or the HF hub, and
turn its official rows into text-to-text examples."""
from __future__ import annotations

import json
from pathlib import Path

import datasets

from lrpt.eval.tasks import EXAMPLE_KEYS, Task

DEMO_DIR = Path(__file__).parent / "demo_data"
HUB_DATASET = "aps/super_glue"          # the parquet copy of `super_glue` (no loading script)
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}

# Fixed so that a batch of unlabeled examples (answers == []) cannot be typed as a list of nulls.
FEATURES = datasets.Features({
    "source": datasets.Value("string"), "target": datasets.Value("string"),
    "candidates": datasets.List(datasets.Value("string")), "answers": datasets.List(datasets.Value("string")),
    "label": datasets.Value("int64"), "group": datasets.Value("string"),
})
assert tuple(FEATURES) == EXAMPLE_KEYS


def split_file(task: Task, split: str, data_dir: str | Path) -> Path:
    path = Path(data_dir).expanduser() / task.dir_name / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{task.name}: expected the {split} split at {path} "
                                f"(official SuperGLUE layout <data_dir>/{task.dir_name}/{{train,val,test}}.jsonl)")
    return path


def check_jsonl(path: Path) -> None:
    """Name the file and line of a malformed row, which `datasets` does not."""
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")


def load_split(task: Task, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Official rows of one split. data_dir: a directory, None for the bundled demo data, "hub" for
    the HF hub's `super_glue`. A local file without `idx` gets one: the row's line position."""
    if data_dir == "hub":
        if split not in HUB_SPLITS:
            raise KeyError(f"{task.name}: unknown split {split!r}; expected one of {list(HUB_SPLITS)}")
        return datasets.load_dataset(HUB_DATASET, task.hub_config, split=HUB_SPLITS[split])
    path = split_file(task, split, DEMO_DIR if data_dir is None else data_dir)
    check_jsonl(path)
    rows = datasets.load_dataset("json", data_files=str(path), split="train")
    if "idx" not in rows.column_names:
        rows = rows.add_column("idx", list(range(len(rows))))
    return rows


def format_rows(task: Task, rows: datasets.Dataset, train: bool = False) -> datasets.Dataset:
    """Official rows -> one row per example (a MultiRC paragraph becomes one row per answer).

    Kept in memory rather than in the `datasets` cache: the cache key does not see edits to the
    task modules, and formatting is cheap next to training."""
    def expand(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in EXAMPLE_KEYS}
        for values in zip(*batch.values()):
            for example in task.examples(dict(zip(batch, values)), train):
                for key in EXAMPLE_KEYS:
                    out[key].append(example[key])
        return out

    return rows.map(expand, batched=True, remove_columns=rows.column_names, features=FEATURES,
                    keep_in_memory=True, desc=f"format {task.name}")


def load_formatted(task: Task, split: str, data_dir: str | Path | None = None,
                   train: bool = False) -> datasets.Dataset:
    """Examples of one split, columns exactly source, target, candidates, answers, label, group.
    train=True lets a task drop rows it does not train on (WSC's negative rows)."""
    return format_rows(task, load_split(task, split, data_dir), train)
