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


class DataError(ValueError):
    """A problem with the data, said as `file:line: what is wrong; what to do`."""


WHERE = "_where"   # column load_split adds: the row's file:line (or hub split and row), for error messages


def split_file(task: Task, split: str, data_dir: str | Path) -> Path:
    path = Path(data_dir).expanduser() / task.dir_name / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file: {task.name} expects its {split} split there (the official "
                        f"SuperGLUE layout <data_dir>/{task.dir_name}/{{train,val,test}}.jsonl)")
    return path


def check_jsonl(path: Path) -> list[int]:
    """The line numbers of the file's rows; a row that is not a UTF-8 JSON object is named by file and line
    (`datasets` names neither)."""
    numbers = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                "one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}; "
                                "one JSON object per line")
            numbers.append(number)
    if not numbers:
        raise DataError(f"{path}: no rows (the file is empty); one JSON object per line")
    return numbers


def read_jsonl(path: Path) -> datasets.Dataset:
    """A JSON-lines file of official rows, checked first, each row with its `file:line` and (if the file has
    none) an `idx`: its row position."""
    numbers = check_jsonl(path)
    rows = datasets.load_dataset("json", data_files=str(path), split="train")  # mixed types: a Json column
    rows = rows.add_column(WHERE, [f"{path}:{n}" for n in numbers])
    if "idx" not in rows.column_names:
        rows = rows.add_column("idx", list(range(len(rows))))
    return rows


def load_split(task: Task, split: str, data_dir: str | Path | None = None) -> datasets.Dataset:
    """Official rows of one split. data_dir: a directory, None for the bundled demo data, "hub" for
    the HF hub's `super_glue`. A local file without `idx` gets one: the row's line position."""
    if data_dir == "hub":
        if split not in HUB_SPLITS:
            raise KeyError(f"{task.name}: unknown split {split!r}; expected one of {list(HUB_SPLITS)}")
        rows = datasets.load_dataset(HUB_DATASET, task.hub_config, split=HUB_SPLITS[split])
        where = f"{HUB_DATASET}/{task.hub_config} {HUB_SPLITS[split]}"
        return rows.add_column(WHERE, [f"{where} row {i}" for i in range(len(rows))])
    return read_jsonl(split_file(task, split, DEMO_DIR if data_dir is None else data_dir))


def row_examples(task: Task, row: dict, train: bool = False, labeled: bool = False) -> list[dict]:
    """task.examples of one official row, its problems said at its file:line. train/labeled: the row must
    have its label (a training row without one would train on an empty target)."""
    where = row.pop(WHERE, None) or f"{task.name} row {row.get('idx', '?')}"
    try:
        examples = task.examples(row, False)  # every row, even one training drops (WSC's negatives), shows its label
        if (train or labeled) and any(not e["answers"] for e in examples):
            raise DataError(f"{where}: no label; every {'training' if train else 'evaluation'} row needs one "
                            "(an unlabeled split, such as test, is for `lrpt predict`)")
        return task.examples(row, True) if train else examples
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if exc.args else repr(exc)
        raise DataError(message if isinstance(exc, DataError) else f"{where}: {message}") from None


def format_rows(task: Task, rows: datasets.Dataset, train: bool = False, labeled: bool = False) -> datasets.Dataset:
    """Official rows -> one row per example (a MultiRC paragraph becomes one row per answer).
    labeled=True refuses a row without its label, as train=True does.

    Kept in memory rather than in the `datasets` cache: the cache key does not see edits to the
    task modules, and formatting is cheap next to training."""
    def expand(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in EXAMPLE_KEYS}
        for values in zip(*batch.values()):
            for example in row_examples(task, dict(zip(batch, values)), train, labeled):
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
