"""The task interface: official rows in, text-to-text examples out, and the benchmark's metric.

An example is a plain dict with exactly the keys in `EXAMPLE_KEYS`, so that a `datasets.Dataset`
can hold it column by column and the trainer can use any of them without knowing the task:

    source      T5's source string
    target      the training target ("" when the split has no label)
    candidates  what rank classification scores; never empty
    answers     gold answer strings the metric compares with ([] when unlabeled)
    label       index of the gold candidate, -1 when unlabeled / not applicable
    group       official group id as a string (MultiRC question, ReCoRD query, else the row idx)
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..metrics import accuracy

EXAMPLE_KEYS = ("source", "target", "candidates", "answers", "label", "group")


def make_example(source: str, target: str, candidates: list[str], answers: list[str],
                 label: int, group: Any) -> dict:
    if not candidates:
        raise ValueError(f"an example needs at least one candidate (source: {source[:80]!r})")
    return {"source": source, "target": target, "candidates": list(candidates),
            "answers": list(answers), "label": int(label), "group": str(group)}


def require(task: str, row: dict, fields: Iterable[str], where: str = "row") -> None:
    """Name every missing field (a null counts as missing: the json loader fills a key that other
    rows have with None) and what the task expects, instead of a bare KeyError deep in a map."""
    fields = list(fields)
    missing = [f for f in fields if row.get(f) is None]
    if missing:
        at = f" (idx {row['idx']})" if row.get("idx") is not None else ""
        raise KeyError(f"{task}: {where}{at} lacks field(s) {missing}; expected {fields}")


def is_unlabeled(label: Any) -> bool:
    """Official test rows have no label; the HF hub writes -1."""
    return label is None or (not isinstance(label, bool) and label == -1)


def gold_answers(task: str, predictions: list[str], examples: list[dict]) -> list[list[str]]:
    """The examples' answers, after checking that every example has some to score against."""
    if len(predictions) != len(examples):
        raise ValueError(f"{task}: {len(predictions)} predictions for {len(examples)} examples")
    unlabeled = sum(not e["answers"] for e in examples)
    if unlabeled:
        raise ValueError(f"{task}: {unlabeled} of {len(examples)} examples have no gold answer "
                         "(an unlabeled split such as test cannot be scored)")
    return [e["answers"] for e in examples]


@dataclass(frozen=True)
class Task:
    """One SuperGLUE task. `dir_name` is its folder in the official layout, `hub_config` its
    config of the HF `super_glue` data set."""
    name: str
    dir_name: str
    hub_config: str

    def examples(self, row: dict, train: bool) -> list[dict]:
        """One official row -> zero or more examples (train=True may drop rows the task does not
        train on)."""
        raise NotImplementedError

    def metrics(self, predictions: list[str], examples: list[dict]) -> dict[str, float]:
        """predictions[i]: generated text (stripped) or chosen candidate for examples[i]."""
        raise NotImplementedError

    def score(self, metrics: dict[str, float]) -> float:
        """The single number of the SuperGLUE table."""
        return metrics["accuracy"]

    def is_valid(self, prediction: str, example: dict) -> bool:
        """Whether a generated text names an answer at all (else the trainer counts it as
        unparsable; it still scores as wrong)."""
        return prediction in example["candidates"]


@dataclass(frozen=True)
class ClassificationTask(Task):
    """A task whose target is one of `label_words`, source `"{name} f1: .. f2: .."` (T5's recipe).

    Labels arrive as strings/bools/ints (official jsonl) or ints (hub); `official_labels` lists
    the jsonl values in `label_words` order, and a hub int is the index itself.
    """
    label_words: tuple[str, ...] = ()
    official_labels: tuple[Any, ...] = ()
    fields: tuple[str, ...] = ()       # input fields in the order T5 writes them

    def label_index(self, label: Any) -> int:
        if isinstance(label, (str, bool)):        # official jsonl ("entailment", true)
            if label in self.official_labels:
                return self.official_labels.index(label)
        elif isinstance(label, int) and 0 <= label < len(self.label_words):
            return label                          # hub ClassLabel index (COPA's jsonl too)
        raise ValueError(f"{self.name}: label {label!r} is not one of {list(self.official_labels)} "
                         f"(official) or 0..{len(self.label_words) - 1} (hub)")

    def source(self, row: dict) -> str:
        return " ".join([self.name] + [f"{f}: {row[f]}" for f in self.fields])

    def examples(self, row: dict, train: bool) -> list[dict]:
        require(self.name, row, self.fields)
        label = row.get("label")
        index = -1 if is_unlabeled(label) else self.label_index(label)
        word = self.label_words[index] if index >= 0 else ""
        return [make_example(self.source(row), word, list(self.label_words), [word] if word else [],
                             index, row.get("idx", ""))]

    def metrics(self, predictions: list[str], examples: list[dict]) -> dict[str, float]:
        gold = [a[0] for a in gold_answers(self.name, predictions, examples)]
        return {"accuracy": accuracy(predictions, gold)}
