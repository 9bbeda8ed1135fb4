"""Load a task split from a local SuperGLUE directory, the bundled demo data, or the HF hub, and
turn its official rows into text-to-text examples."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets

from .tasks import EXAMPLE_KEYS, Task

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


JSON_SPACE = " \t\r\n"  # all JSON (and `datasets`) skips as space; str.strip() takes more (U+00A0, U+000B, ...)
MAX_DEPTH = 32          # nesting `datasets` reads with room to spare (Arrow stops near 64); SuperGLUE's rows nest 4
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a row's lone surrogate comes from such an escape, never UTF-8
WHERE = "_where"   # column load_split adds: the row's file:line (or hub split and row), for error messages


def split_file(task: Task, split: str, data_dir: str | Path) -> Path:
    path = Path(data_dir).expanduser() / task.dir_name / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file: {task.name} expects its {split} split there (the official "
                        f"SuperGLUE layout <data_dir>/{task.dir_name}/{{train,val,test}}.jsonl)")
    return path


def check_jsonl(path: Path) -> list[int]:
    """The line numbers of the file's rows; a row that `datasets` would refuse, or misread, is named by file and
    line (`datasets` names neither): not UTF-8, not one JSON object, or JSON that only Python's reader takes."""
    numbers = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1}); save the file as UTF-8") from None
            if not line.strip(JSON_SPACE):
                continue
            problem = _row_problem(line)
            if problem:
                raise DataError(f"{path}:{number}: {problem}")
            numbers.append(number)
    if not numbers:
        raise DataError(f"{path}: no rows (the file is empty); one JSON object per line")
    return numbers


def _row_problem(line: str) -> str | None:
    """What is wrong with one non-blank line as a row, or None."""
    if not line.strip():
        spaces = ", ".join(dict.fromkeys(f"U+{ord(c):04X}" for c in line if c not in JSON_SPACE))
        return f"a line of only {spaces}, which JSON does not read as space; delete the line"
    try:
        row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno}); one JSON object per line"
    except _DuplicateKey as exc:
        return f"key {json.dumps(exc.args[0])} appears twice in one object; keep one"
    except RecursionError:
        return f"nested deeper than {MAX_DEPTH} levels; flatten the row"
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}; one JSON object per line"
    maybe = _SURROGATE_ESCAPE.search(line) or line.count("{") + line.count("[") > MAX_DEPTH  # else nothing to find
    return _unreadable(row) if maybe else None


class _DuplicateKey(ValueError):
    """A key given twice in one JSON object: json keeps the last, `datasets` refuses the whole file."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    row = dict(pairs)
    if len(row) < len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return row


def _unreadable(value: Any, path: str = "", depth: int = 1) -> str | None:
    """What json reads in a row but `datasets` (Arrow) cannot: a lone UTF-16 surrogate (an escape such as
    \\ud800 without its pair), a row nested too deep. None if there is nothing."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels; flatten the row"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        for text, what in ((key, "key"), (item, "value")):
            if isinstance(text, str) and (half := _lone_surrogate(text)):
                return (f"the {what} at {where!r} holds \\u{ord(half):04x}, half of a UTF-16 surrogate pair and no "
                        "character; write the character itself, or both halves of its pair")
        problem = _unreadable(item, where, depth + 1)
        if problem:
            return problem
    return None


def _lone_surrogate(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


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


class _NotText:
    """A JSON object or array of a row that refuses to become text: a task that writes it into a source or target
    (an f-string, str()) would train on Python's spelling of it ("{'a': 1}"); that is an error naming it instead."""
    path: str
    kind: str

    def __str__(self) -> str:
        shown = repr(self) if len(repr(self)) <= 40 else repr(self)[:37] + "..."
        raise ValueError(f"field {self.path!r} is a JSON {self.kind} ({shown}) where the task reads text; "
                         "give it as a JSON string")

    def __format__(self, spec: str) -> str:
        return self.__str__()


class _Object(_NotText, dict):
    kind = "object"


class _Array(_NotText, list):
    kind = "array"


def _as_text_guarded(value: Any, path: str) -> Any:
    """`value` with every object and array in it (at any depth) a _NotText: read like the JSON, never written."""
    if isinstance(value, dict):
        guarded = _Object({k: _as_text_guarded(v, f"{path}.{k}") for k, v in value.items()})
    elif isinstance(value, list):
        guarded = _Array(_as_text_guarded(v, f"{path}[{i}]") for i, v in enumerate(value))
    else:
        return value
    guarded.path = path
    return guarded


def row_examples(task: Task, row: dict, train: bool = False, labeled: bool = False) -> list[dict]:
    """task.examples of one official row, its problems said at its file:line. train/labeled: the row must
    have its label (a training row without one would train on an empty target)."""
    where = row.pop(WHERE, None) or f"{task.name} row {row.get('idx', '?')}"
    row = {key: value if key == "idx" else _as_text_guarded(value, key) for key, value in row.items()}
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
