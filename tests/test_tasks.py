"""Formatters on hand-written rows in the official jsonl layout (and the hub's, where it differs),
loading, and the errors bad input must give."""
from __future__ import annotations

import json

import pytest

from lrpt.eval.data import DataError, load_formatted, load_split
from lrpt.eval.tasks import EXAMPLE_KEYS, TASKS, get_task


def one(task: str, row: dict, train: bool = False) -> dict:
    examples = get_task(task).examples(row, train)
    assert len(examples) == 1
    assert tuple(examples[0]) == EXAMPLE_KEYS
    return examples[0]


def test_boolq():
    ex = one("boolq", {"question": "is the sky blue", "passage": "The sky is blue.", "idx": 7, "label": True})
    assert ex == {"source": "boolq passage: The sky is blue. question: is the sky blue", "target": "True",
                  "candidates": ["False", "True"], "answers": ["True"], "label": 1, "group": "7"}
    assert one("boolq", {"question": "q", "passage": "p", "idx": 1, "label": 0})["target"] == "False"  # hub int


def test_cb():
    row = {"premise": "A said B left.", "hypothesis": "B left.", "idx": 3, "label": "contradiction"}
    assert one("cb", row) == {"source": "cb hypothesis: B left. premise: A said B left.", "target": "contradiction",
                              "candidates": ["entailment", "contradiction", "neutral"],
                              "answers": ["contradiction"], "label": 1, "group": "3"}
    assert one("cb", {**row, "label": 2})["target"] == "neutral"                  # hub ClassLabel


def test_copa():
    row = {"premise": "The ground was wet.", "choice1": "It rained.", "choice2": "It was sunny.",
           "question": "cause", "idx": 11, "label": 0}
    assert one("copa", row) == {
        "source": "copa choice1: It rained. choice2: It was sunny. premise: The ground was wet. question: cause",
        "target": "choice1", "candidates": ["choice1", "choice2"], "answers": ["choice1"], "label": 0, "group": "11"}
    assert one("copa", {**row, "label": 1})["target"] == "choice2"


def test_rte_and_test_split_rows_are_unlabeled():
    row = {"premise": "P.", "hypothesis": "H.", "idx": 0, "label": "not_entailment"}
    assert one("rte", row) == {"source": "rte hypothesis: H. premise: P.", "target": "not_entailment",
                               "candidates": ["entailment", "not_entailment"], "answers": ["not_entailment"],
                               "label": 1, "group": "0"}
    for unlabeled in ({"premise": "P.", "hypothesis": "H.", "idx": 0}, {**row, "label": -1}):
        ex = one("rte", unlabeled)
        assert (ex["target"], ex["answers"], ex["label"]) == ("", [], -1)
        assert ex["candidates"] == ["entailment", "not_entailment"]


def test_wic():
    row = {"word": "bank", "sentence1": "The river bank.", "sentence2": "The bank loan.", "start1": 10, "end1": 14,
           "start2": 4, "end2": 8, "idx": 5, "label": False, "version": 1.1}
    assert one("wic", row) == {"source": "wic sentence1: The river bank. sentence2: The bank loan. word: bank",
                               "target": "False", "candidates": ["False", "True"], "answers": ["False"],
                               "label": 0, "group": "5"}


MULTIRC_ROW = {
    "idx": 4, "version": 1.1,
    "passage": {"text": "<b>Sent 1: </b>Ann ran.<br><b>Sent 2: </b>Bo sat.<br>", "questions": [
        {"question": "Who ran?", "idx": 0, "answers": [{"text": "Ann", "idx": 0, "label": 1},
                                                       {"text": "Bo", "idx": 1, "label": 0}]},
        {"question": "Who sat?", "idx": 1, "answers": [{"text": "Bo", "idx": 2, "label": 1}]},
    ]}}


def test_multirc_one_example_per_answer_grouped_by_question():
    examples = get_task("multirc").examples(MULTIRC_ROW, train=True)
    assert [tuple(e) for e in examples] == [EXAMPLE_KEYS] * 3
    assert examples[0] == {"source": "multirc question: Who ran? answer: Ann paragraph: "
                                     "Sent 1: Ann ran. Sent 2: Bo sat. ",
                           "target": "True", "candidates": ["False", "True"], "answers": ["True"], "label": 1,
                           "group": "4-0"}
    assert [(e["target"], e["group"]) for e in examples] == [("True", "4-0"), ("False", "4-0"), ("True", "4-1")]
    assert examples[1]["source"].startswith("multirc question: Who ran? answer: Bo paragraph: Sent 1:")
    hub = {"paragraph": "<b>Sent 1: </b>Ann ran.<br><b>Sent 2: </b>Bo sat.<br>", "question": "Who ran?",
           "answer": "Ann", "idx": {"paragraph": 4, "question": 0, "answer": 0}, "label": 1}
    assert one("multirc", hub) == examples[0]


RECORD_TEXT = ("Ann Lee met Bo in Oslo. The US team won.\n@highlight\nAnn Lee spoke\n@highlight\nThey won!\n"
               "@highlight\nUnited States cheers")
RECORD_ROW = {
    "source": "demo", "idx": 9,
    "passage": {"text": RECORD_TEXT, "entities": [  # unsorted, inclusive ends, a repeated mention
        {"start": 12, "end": 13}, {"start": 0, "end": 6}, {"start": 28, "end": 29}, {"start": 52, "end": 58},
        {"start": 18, "end": 21}, {"start": 98, "end": 110}]},
    "qas": [{"query": "@placeholder team won.", "idx": 21,
             "answers": [{"start": 28, "end": 29, "text": "US"}, {"start": 98, "end": 110, "text": "United States"}]},
            {"query": "@placeholder met Bo.", "idx": 22, "answers": [{"start": 0, "end": 6, "text": "Ann Lee"}]}]}


def test_record_one_example_per_query():
    first, second = get_task("record").examples(RECORD_ROW, train=False)
    assert first == {
        "source": ("record query: @placeholder team won. entities: Ann Lee, Bo, Oslo, US, United States passage: "
                   "Ann Lee met Bo in Oslo. The US team won. Ann Lee spoke. They won! United States cheers"),
        "target": "US", "candidates": ["Ann Lee", "Bo", "Oslo", "US", "United States"],
        "answers": ["US", "United States"], "label": 3, "group": "21"}
    assert (second["target"], second["answers"], second["label"], second["group"]) == ("Ann Lee", ["Ann Lee"], 0, "22")
    hub = {"passage": RECORD_TEXT, "query": "@placeholder met Bo.",
           "entities": ["Bo", "Oslo", "US", "Ann Lee", "United States"],
           "entity_spans": {"text": ["US", "Ann Lee", "Bo"], "start": [28, 0, 12], "end": [30, 7, 14]},
           "answers": ["Ann Lee"], "idx": {"passage": 9, "query": 22}}
    ex = one("record", hub)
    assert ex["candidates"] == ["Ann Lee", "Bo", "US"] and ex["group"] == "22" and ex["label"] == 0
    del hub["entity_spans"]
    assert one("record", hub)["candidates"] == hub["entities"]


def test_record_passage_highlights_follow_t5():
    """After . ? ! " ' the marker becomes a space; otherwise ". "."""
    from lrpt.eval.tasks.record import passage_sentences
    assert passage_sentences("Intro.\n@highlight\nA\n@highlight\nB?\n@highlight\nC") == "Intro. A. B? C"


WSC_ROW = {"text": "Mark told Pete many lies about himself, which Pete included in his book.", "idx": 2,
           "label": False, "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 11, "span2_text": "his"}}


def test_wsc_marks_the_pronoun_and_trains_on_positives_only():
    ex = one("wsc", WSC_ROW)
    assert ex == {"source": "wsc: Mark told Pete many lies about himself, which Pete included in *his* book.",
                  "target": "Mark", "candidates": ["Mark"], "answers": ["False"], "label": -1, "group": "2"}
    assert get_task("wsc").examples(WSC_ROW, train=True) == []
    positive = {**WSC_ROW, "label": True, "target": {**WSC_ROW["target"], "span1_index": 2, "span1_text": "Pete"}}
    train = one("wsc", positive, train=True)
    assert (train["target"], train["answers"], train["label"]) == ("Pete", ["True"], 0)
    # punctuation glued to the pronoun stays outside the marks; the hub's flat layout works too
    hub = {"text": "Ann thanked Bo for helping her.", "span1_index": 0, "span1_text": "Ann", "span2_index": 5,
           "span2_text": "her", "idx": 8, "label": 1}
    assert one("wsc", hub)["source"] == "wsc: Ann thanked Bo for helping *her*."


def test_every_task_loads_its_demo_data():
    for name, task in TASKS.items():
        for split in ("train", "val"):
            ds = load_formatted(task, split, train=split == "train")
            assert ds.column_names == list(EXAMPLE_KEYS)
            assert len(ds) > 0, (name, split)
            for ex in ds:
                assert ex["candidates"] and ex["answers"]
                if name != "wsc":
                    assert ex["candidates"][ex["label"]] == ex["target"], (name, ex)
    assert len(load_formatted(get_task("multirc"), "val")) > len(load_split(get_task("multirc"), "val"))
    wsc_train = load_formatted(get_task("wsc"), "train", train=True)
    assert set(wsc_train["answers"][i][0] for i in range(len(wsc_train))) == {"True"}
    assert len(wsc_train) < len(load_split(get_task("wsc"), "train"))


def test_unlabeled_split_keeps_its_columns(tmp_path):
    """A test split (no labels, so answers == [] everywhere) still loads with the same schema."""
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "test.jsonl").write_text(json.dumps({"premise": "P.", "hypothesis": "H.", "idx": 0}) + "\n")
    ds = load_formatted(get_task("rte"), "test", tmp_path)
    assert ds.column_names == list(EXAMPLE_KEYS) and ds[0]["answers"] == [] and ds[0]["label"] == -1


# --- bad input --------------------------------------------------------------------------------

def test_malformed_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    path = tmp_path / "RTE" / "train.jsonl"
    path.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "entailment"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
        load_split(get_task("rte"), "train", tmp_path)


def test_missing_field_names_it(tmp_path):
    with pytest.raises(KeyError, match=r"lacks field\(s\) \['hypothesis'\]"):
        get_task("rte").examples({"premise": "a", "label": "entailment"}, train=False)
    with pytest.raises(KeyError, match=r"span2_index"):
        get_task("wsc").examples({"text": "a b", "label": True, "target": {"span1_text": "a", "span2_text": "b"}},
                                 False)
    with pytest.raises(KeyError, match=r"answers"):
        bad = json.loads(json.dumps(MULTIRC_ROW))
        del bad["passage"]["questions"][1]["answers"]
        get_task("multirc").examples(bad, train=False)
    # through the loader too: a file whose rows lack a field
    (tmp_path / "CB").mkdir()
    (tmp_path / "CB" / "val.jsonl").write_text(json.dumps({"premise": "a", "idx": 0, "label": "neutral"}) + "\n")
    with pytest.raises(DataError, match=rf"{tmp_path}/CB/val.jsonl:1: cb: row \(idx 0\) lacks field\(s\) "
                                        r"\['hypothesis'\]"):
        load_formatted(get_task("cb"), "val", tmp_path)


def test_missing_split_names_the_expected_path(tmp_path):
    with pytest.raises(DataError, match=r"WiC/val\.jsonl: no such file"):
        load_split(get_task("wic"), "val", tmp_path)


def test_bad_label_names_the_expected_ones():
    with pytest.raises(ValueError, match=r"'maybe'.*entailment"):
        get_task("rte").examples({"premise": "a", "hypothesis": "b", "label": "maybe"}, train=False)


def test_unknown_task_lists_known_ones():
    with pytest.raises(KeyError, match="boolq, cb, copa, multirc, record, rte, wic, wsc"):
        get_task("squad")
