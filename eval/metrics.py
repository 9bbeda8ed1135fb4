"""Task metrics, as the SuperGLUE benchmark defines them. All return fractions in [0, 1]."""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def accuracy(predictions: Sequence, references: Sequence) -> float:
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def _f1(tp: int, fp: int, fn: int) -> float:
    # 2PR/(P+R) written in counts; 0 when there is nothing to score, as scikit-learn's default.
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def macro_f1(predictions: Sequence, references: Sequence, labels: Sequence) -> float:
    """Unweighted mean of per-class F1 over `labels` (scikit-learn's `average="macro"` with
    `labels=`). A prediction outside `labels` is a miss for the gold class and a false positive
    for none, so an unparsable output costs recall but never another class's precision."""
    _check_lengths(predictions, references)
    scores = []
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(predictions, references))
        fp = sum(p == label and r != label for p, r in zip(predictions, references))
        fn = sum(p != label and r == label for p, r in zip(predictions, references))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def binary_f1(predicted_positive: Sequence[bool], gold_positive: Sequence[bool]) -> float:
    """F1 of the positive class (MultiRC's F1a: over all answers of all questions)."""
    _check_lengths(predicted_positive, gold_positive)
    pairs = list(zip(predicted_positive, gold_positive))
    return _f1(sum(p and g for p, g in pairs), sum(p and not g for p, g in pairs),
               sum(g and not p for p, g in pairs))


def group_exact_match(correct: Sequence[bool], groups: Sequence[Hashable]) -> float:
    """Fraction of groups whose members are all correct (MultiRC's EM: a question counts only
    when every one of its answers is labelled right)."""
    _check_lengths(correct, groups)
    all_right: dict[Hashable, bool] = {}
    for ok, group in zip(correct, groups):
        all_right[group] = all_right.get(group, True) and bool(ok)
    return sum(all_right.values()) / len(all_right) if all_right else 0.0


# --- SQuAD-style answer comparison (ReCoRD's official evaluation uses SQuAD v1.1's) ----------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace
    (in SQuAD v1.1's order: punctuation goes before articles, so "the-end" -> "theend")."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 after normalization (0 when nothing overlaps, also when both are empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def max_over_answers(metric, prediction: str, answers: Sequence[str]) -> float:
    """A query with several gold answers scores its best match."""
    if not answers:
        raise ValueError("no gold answers to compare with")
    return max(metric(prediction, a) for a in answers)
