"""Load a task split from a local SuperGLUE directory, the bundled demo data, or the HF hub."""
from __future__ import annotations

import json
from pathlib import Path

import datasets

from eval.tasks import Task

DEMO_DIR = Path(__file__).parent / "demo_data"
HUB_DATASET = "aps/super_glue"          # the parquet copy of `super_glue` (no loading script)
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


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
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None


def load_split(task: Task, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Official rows of one split. data_dir: a directory, None for the bundled demo data, "hub" for
    the HF hub's `super_glue`."""
    if data_dir == "hub":
        return datasets.load_dataset(HUB_DATASET, task.hub_config, split=HUB_SPLITS[split])
    path = split_file(task, split, DEMO_DIR if data_dir is None else data_dir)
    check_jsonl(path)
    return datasets.load_dataset("json", data_files=str(path), split="train")


def load_formatted(task: Task, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Rows as {'source', 'target', 'label'}, via `datasets.map` (cached, batched-ready)."""
    rows = load_split(task, split, data_dir)
    return rows.map(task.format, remove_columns=rows.column_names, desc=f"format {task.name}/{split}")
