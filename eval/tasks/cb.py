from dataclasses import dataclass

from eval.metrics import accuracy, macro_f1
from eval.tasks.base import Task


@dataclass(frozen=True)
class CommitmentBank(Task):
    def metrics(self, predictions: list[int], labels: list[int]) -> dict[str, float]:
        return {"accuracy": accuracy(predictions, labels),
                "macro_f1": macro_f1(predictions, labels, range(len(self.label_words)))}


CB = CommitmentBank(name="cb", dir_name="CB", hub_config="cb",
                    label_words=("entailment", "contradiction", "neutral"),
                    official_labels=("entailment", "contradiction", "neutral"),
                    fields=("hypothesis", "premise"))
