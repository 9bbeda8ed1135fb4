"""WSC in T5's "simple" form: name the referent of a marked pronoun.

Source: `wsc: ` + the text with the pronoun (the words at `span2_index`, counted by splitting the
text on single spaces as T5 does) wrapped in asterisks, e.g. `... because *she* was late.`;
punctuation glued to the pronoun stays outside the asterisks (T5 hand-patches those few rows).
Target: `span1_text`, the candidate noun. T5 trains on the rows whose candidate *is* the referent
(train=True drops the others: their target would teach a wrong answer) and at evaluation asks
whether the generated noun is the candidate, then compares that yes/no with the row's label.

Rank classification is not meaningful here: there is one candidate (`span1_text`), so it is
always chosen, which reads as "referent = candidate" for every row (accuracy = share of positive
rows). `label` is 0 when the candidate is the referent and -1 otherwise, consistent with that.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..metrics import accuracy
from .base import Task, gold_answers, is_unlabeled, make_example, require

SPAN_FIELDS = ("span1_text", "span2_index", "span2_text")

# T5's postprocessor ignores these words when comparing a prediction with the candidate.
DETERMINERS = frozenset({"a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our",
                         "some", "that", "the", "their", "these", "this", "those", "which", "whose",
                         "your"})


def mark_pronoun(text: str, index: int, pronoun: str) -> str:
    words = text.split(" ")
    n = len(pronoun.split(" "))
    if not 0 <= index <= len(words) - n:
        raise ValueError(f"wsc: span2_index {index} is outside the text's {len(words)} words: {text!r}")
    span = " ".join(words[index:index + n])
    if span.lower().startswith(pronoun.lower()):
        marked = f"*{span[:len(pronoun)]}*{span[len(pronoun):]}"
    else:   # span2_text disagrees with the text: trust the index, mark the words there
        marked = f"*{span}*"
    return " ".join(words[:index] + [marked] + words[index + n:])


def names_referent(prediction: str, referent: str) -> bool:
    """T5's rule: lowercase, drop determiners, then one word set contains the other ("fuzzy
    bunny" names "bunny"), unless exactly one of them is possessive ("Bob" is not "Bob's hat")."""
    def clean(s: str) -> str:
        return " ".join(w for w in s.strip().lower().split(" ") if w not in DETERMINERS)

    prediction, referent = clean(prediction), clean(referent)
    if not prediction or ("'" in prediction) != ("'" in referent):
        return False
    pred_words, ref_words = set(prediction.split(" ")), set(referent.split(" "))
    return pred_words <= ref_words or ref_words <= pred_words


@dataclass(frozen=True)
class WSC(Task):
    def examples(self, row: dict, train: bool) -> list[dict]:
        require(self.name, row, ("text",))
        spans = row["target"] if isinstance(row.get("target"), dict) else row   # official nests them
        require(self.name, spans, SPAN_FIELDS, where="target")
        label = row.get("label")
        positive = None if is_unlabeled(label) else bool(label)
        if train and not positive:
            return []
        noun = spans["span1_text"]
        source = "wsc: " + mark_pronoun(row["text"], int(spans["span2_index"]), spans["span2_text"])
        answers = [] if positive is None else [str(positive)]
        return [make_example(source, noun if positive is not None else "", [noun], answers,
                             0 if positive else -1, row.get("idx", ""))]

    def metrics(self, predictions: list[str], examples: list[dict]) -> dict[str, float]:
        """Accuracy of "the prediction names the candidate" against the row's boolean label. An empty generation
        is wrong on every row: T5's rule would read it as "not the referent", right on every negative row."""
        gold = [a[0] for a in gold_answers(self.name, predictions, examples)]
        said = [str(names_referent(p, e["candidates"][0])) if self.is_valid(p, e) else "(no answer)"
                for p, e in zip(predictions, examples)]
        return {"accuracy": accuracy(said, gold)}

    def is_valid(self, prediction: str, example: dict) -> bool:
        """Any non-empty text is an answer: it either names the candidate or it does not."""
        return bool(prediction.strip())


WSC_TASK = WSC(name="wsc", dir_name="WSC", hub_config="wsc.fixed")
