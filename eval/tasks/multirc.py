"""MultiRC: is a candidate answer to a question about a paragraph correct.

An official row is a whole paragraph with its questions and their answers; T5 (and the HF hub)
turn every answer into its own True/False example. Questions have several correct answers, which
is why the benchmark adds an exact-match score per question (`group`) to the F1 over answers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..metrics import binary_f1, group_exact_match
from .base import Task, gold_answers, is_unlabeled, make_example, require

WORDS = ("False", "True")


def remove_markup(text: str) -> str:
    """The paragraphs carry `<b>Sent 1: </b>...<br>` markup; T5 drops it from the source."""
    return re.sub(r"</?b>", "", re.sub(r"<br>", " ", text))


@dataclass(frozen=True)
class MultiRC(Task):
    def _example(self, paragraph: str, question: str, answer: str, label, group: str) -> dict:
        source = remove_markup(f"multirc question: {question} answer: {answer} paragraph: {paragraph}")
        index = -1 if is_unlabeled(label) else int(bool(label))   # jsonl 0/1 (or bool), hub 0/1
        word = WORDS[index] if index >= 0 else ""
        return make_example(source, word, list(WORDS), [word] if word else [], index, group)

    def examples(self, row: dict, train: bool) -> list[dict]:
        if "passage" not in row:   # the hub's flat layout: one row per answer already
            require(self.name, row, ("paragraph", "question", "answer", "idx"))
            idx = row["idx"]
            return [self._example(row["paragraph"], row["question"], row["answer"], row.get("label"),
                                  f"{idx['paragraph']}-{idx['question']}")]
        require(self.name, row, ("passage", "idx"))
        passage = row["passage"]
        require(self.name, passage, ("text", "questions"), where="passage")
        out = []
        for question in passage["questions"]:
            require(self.name, question, ("question", "answers", "idx"), where="question")
            group = f"{row['idx']}-{question['idx']}"
            for answer in question["answers"]:
                require(self.name, answer, ("text",), where="answer")
                out.append(self._example(passage["text"], question["question"], answer["text"],
                                         answer.get("label"), group))
        return out

    def metrics(self, predictions: list[str], examples: list[dict]) -> dict[str, float]:
        """f1a: F1 of "True" over all answers (a prediction is positive iff it is exactly "True");
        em: fraction of questions whose answers are all predicted exactly right."""
        gold = [a[0] for a in gold_answers(self.name, predictions, examples)]
        return {"f1a": binary_f1([p == "True" for p in predictions], [g == "True" for g in gold]),
                "em": group_exact_match([p == g for p, g in zip(predictions, gold)],
                                        [e["group"] for e in examples])}

    def score(self, metrics: dict[str, float]) -> float:
        return (metrics["f1a"] + metrics["em"]) / 2


MULTIRC = MultiRC(name="multirc", dir_name="MultiRC", hub_config="multirc")
