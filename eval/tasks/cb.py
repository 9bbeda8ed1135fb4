"""CommitmentBank: three-way entailment, scored by accuracy and macro-F1 (CB's classes are
unbalanced, so the benchmark averages both)."""
from __future__ import annotations

from dataclasses import dataclass

from ..metrics import accuracy, macro_f1
from .base import ClassificationTask, gold_answers


@dataclass(frozen=True)
class CommitmentBank(ClassificationTask):
    def metrics(self, predictions: list[str], examples: list[dict]) -> dict[str, float]:
        gold = [a[0] for a in gold_answers(self.name, predictions, examples)]
        return {"accuracy": accuracy(predictions, gold),
                "macro_f1": macro_f1(predictions, gold, self.label_words)}

    def score(self, metrics: dict[str, float]) -> float:
        return (metrics["accuracy"] + metrics["macro_f1"]) / 2


CB = CommitmentBank(name="cb", dir_name="CB", hub_config="cb",
                    label_words=("entailment", "contradiction", "neutral"),
                    official_labels=("entailment", "contradiction", "neutral"),
                    fields=("hypothesis", "premise"))
