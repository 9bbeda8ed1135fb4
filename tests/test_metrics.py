"""Each task's metric on cases worked out by hand."""
from __future__ import annotations

import pytest

from lrpt.eval.metrics import accuracy, binary_f1, group_exact_match, macro_f1, normalize_answer, token_f1
from lrpt.eval.tasks import get_task
from lrpt.eval.tasks.wsc import names_referent


def labeled(answer: str, candidates: list[str], group: str = "0") -> dict:
    return {"source": "", "target": answer, "candidates": candidates, "answers": [answer],
            "label": candidates.index(answer) if answer in candidates else -1, "group": group}


def test_accuracy_counts_an_unparsable_prediction_as_wrong():
    boolq = get_task("boolq")
    examples = [labeled(a, ["False", "True"]) for a in ("True", "False", "True", "True")]
    metrics = boolq.metrics(["True", "False", "yes", "False"], examples)
    assert metrics == {"accuracy": 0.5} and boolq.score(metrics) == 0.5
    assert not boolq.is_valid("yes", examples[2]) and boolq.is_valid("True", examples[2])


CB_GOLD = ["entailment", "entailment", "contradiction", "neutral", "neutral", "entailment"]
CB_PRED = ["entailment", "contradiction", "contradiction", "neutral", "entailment", "garbage"]
# by hand: entailment tp 1 fp 1 fn 2 -> F1 2/5; contradiction tp 1 fp 1 fn 0 -> 2/3; neutral tp 1 fp 0 fn 1 -> 2/3
CB_MACRO_F1 = (2 / 5 + 2 / 3 + 2 / 3) / 3


def test_cb_accuracy_and_macro_f1_by_hand():
    cb = get_task("cb")
    examples = [labeled(g, list(cb.label_words)) for g in CB_GOLD]
    metrics = cb.metrics(CB_PRED, examples)
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["macro_f1"] == pytest.approx(CB_MACRO_F1)
    assert cb.score(metrics) == pytest.approx((0.5 + CB_MACRO_F1) / 2)
    # a class neither predicted nor present scores 0 (scikit-learn's zero_division default)
    assert macro_f1(["a", "a"], ["a", "a"], ["a", "b"]) == pytest.approx(0.5)


def test_cb_macro_f1_agrees_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    labels = ["entailment", "contradiction", "neutral"]
    assert macro_f1(CB_PRED, CB_GOLD, labels) == pytest.approx(
        metrics.f1_score(CB_GOLD, CB_PRED, labels=labels, average="macro", zero_division=0))
    valid = CB_PRED[:5] + ["neutral"]
    assert macro_f1(valid, CB_GOLD, labels) == pytest.approx(metrics.f1_score(CB_GOLD, valid, average="macro"))


def test_multirc_f1a_over_answers_and_em_per_question():
    multirc = get_task("multirc")
    gold = ["True", "False", "True", "False", "True", "True"]
    groups = ["0-0", "0-0", "0-0", "0-1", "0-1", "1-0"]
    pred = ["True", "False", "False", "False", "True", "maybe"]
    examples = [labeled(a, ["False", "True"], g) for a, g in zip(gold, groups)]
    metrics = multirc.metrics(pred, examples)
    # positives predicted: 2, both right (tp 2, fp 0); gold positives 4 (fn 2) -> F1 4/6
    assert metrics["f1a"] == pytest.approx(2 / 3)
    # question 0-0 has a wrong answer, 0-1 all right, 1-0 unparsable -> 1 of 3
    assert metrics["em"] == pytest.approx(1 / 3)
    assert multirc.score(metrics) == pytest.approx(0.5)
    # the grouping matters: per answer, 4 of 6 would be right
    assert group_exact_match([p == g for p, g in zip(pred, gold)], range(6)) == pytest.approx(4 / 6)


def test_binary_f1_edges():
    assert binary_f1([False, False], [False, False]) == 0.0
    assert binary_f1([True, True, False], [True, False, True]) == pytest.approx(0.5)


def test_squad_normalization():
    assert normalize_answer("The  Big-Apple, an A.") == "bigapple"
    assert normalize_answer("  United   States! ") == "united states"
    assert token_f1("New York", "New York City") == pytest.approx(0.8)      # P 1, R 2/3


def test_record_max_over_gold_answers_averaged_over_queries():
    record = get_task("record")
    def query(answers: list[str], group: str) -> dict:
        return {"source": "", "target": answers[0], "candidates": ["US", "United States", "Ann Lee", "Oslo", "Bo"],
                "answers": answers, "label": 0, "group": group}
    examples = [query(["US", "United States"], "1"), query(["Ann Lee"], "2"), query(["Oslo"], "3"),
                query(["New York City", "NYC"], "4")]
    metrics = record.metrics(["the United States!", "Lee", "Bo", "New York"], examples)
    # em: 1, 0, 0, 0; f1: 1, 2/3 (P 1, R 1/2), 0, max(0.8, 0)
    assert metrics["em"] == pytest.approx(1 / 4)
    assert metrics["f1"] == pytest.approx((1 + 2 / 3 + 0 + 0.8) / 4)
    assert record.score(metrics) == pytest.approx((metrics["f1"] + metrics["em"]) / 2)
    assert record.is_valid("the united states", examples[0]) and not record.is_valid("Paris", examples[0])


def test_wsc_referent_matching_follows_t5():
    assert names_referent("the dog", "Dog")
    assert names_referent("fuzzy bunny", "the bunny") and names_referent("bunny", "fuzzy bunny")
    assert not names_referent("Bob", "Bob's hat")
    assert not names_referent("Pete", "Mark") and not names_referent("", "Mark")


def test_wsc_accuracy_compares_named_referent_with_label():
    wsc = get_task("wsc")
    def row(noun: str, label: bool) -> dict:
        return {"text": "Ann thanked Bo because she was glad.", "idx": 0, "label": label,
                "target": {"span1_index": 0, "span1_text": noun, "span2_index": 4, "span2_text": "she"}}
    examples = [wsc.examples(row("Ann", True), False)[0], wsc.examples(row("Bo", False), False)[0],
                wsc.examples(row("Ann", True), False)[0], wsc.examples(row("Bo", False), False)[0]]
    # names Ann (right), names Bo for a negative row (wrong), names Bo for Ann (wrong), names Ann for Bo (right)
    assert wsc.metrics(["ann", "Bo", "Bo", "Ann"], examples) == {"accuracy": 0.5}
    # rank classification (always the one candidate) = share of positive rows
    assert wsc.metrics([e["candidates"][0] for e in examples], examples) == {"accuracy": 0.5}
    assert wsc.is_valid("someone", examples[0]) and not wsc.is_valid("  ", examples[0])
    # an empty generation is wrong on the negative rows too (T5's rule reads it as "not the referent": 2 of 4)
    assert wsc.metrics(["", " ", "", ""], examples) == {"accuracy": 0.0}
    assert wsc.metrics(["Ann", "", "Ann", "Pete"], examples) == {"accuracy": 0.75}  # Pete: valid, not Bo: right


def test_metrics_refuse_unlabeled_or_mismatched_input():
    rte = get_task("rte")
    unlabeled = rte.examples({"premise": "p", "hypothesis": "h", "idx": 0}, train=False)
    with pytest.raises(ValueError, match="no gold answer"):
        rte.metrics(["entailment"], unlabeled)
    with pytest.raises(ValueError, match="2 predictions for 1 examples"):
        rte.metrics(["entailment"] * 2, [labeled("entailment", ["entailment", "not_entailment"])])
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])
