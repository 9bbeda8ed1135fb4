"""The task interface: official rows in, (source, target) text pairs out, and the task's metric."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eval.metrics import accuracy


@dataclass(frozen=True)
class Task:
    """A classification task whose target is one of `label_words` (T5's text-to-text recipe).

    `dir_name` is the folder in the official SuperGLUE layout; `hub_config` the config name of
    the HF `super_glue` data set. Labels arrive as strings/bools (official jsonl) or ints (hub);
    `label_index` maps both to an index into `label_words`.
    """
    name: str
    dir_name: str
    hub_config: str
    label_words: tuple[str, ...]
    official_labels: tuple[Any, ...]   # the official jsonl's label values, in label_words order
    fields: tuple[str, ...]            # input fields in the order T5 writes them

    def source(self, row: dict) -> str:
        parts = [self.name] + [f"{f}: {row[f]}" for f in self.fields]
        return " ".join(parts)

    def label_index(self, label: Any) -> int:
        if isinstance(label, bool) or label in self.official_labels:
            return self.official_labels.index(label)
        if isinstance(label, int) and 0 <= label < len(self.label_words):
            return label
        raise ValueError(f"{self.name}: label {label!r} is not one of {list(self.official_labels)}")

    def format(self, row: dict) -> dict:
        """Official row -> {'source', 'target', 'label'}; label -1 where the split has none (test)."""
        missing = [f for f in self.fields if f not in row]
        if missing:
            raise KeyError(f"{self.name}: row lacks field(s) {missing}; expected {list(self.fields) + ['label']}")
        label = row.get("label")
        index = -1 if label is None or label == -1 else self.label_index(label)
        return {"source": self.source(row), "target": self.label_words[index] if index >= 0 else "",
                "label": index}

    def parse(self, text: str) -> int:
        """Generated text -> label index, or -1 when it names no label (counted as wrong)."""
        text = text.strip()
        return self.label_words.index(text) if text in self.label_words else -1

    def metrics(self, predictions: list[int], labels: list[int]) -> dict[str, float]:
        return {"accuracy": accuracy(predictions, labels)}
