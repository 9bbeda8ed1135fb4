"""Every data problem is one line `file:line: what is wrong; what to do`, exit 2, before the backbone loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrpt.trainer.cli.main import main

GOOD = [{"premise": "A cat sat.", "hypothesis": "A cat.", "label": "entailment", "idx": i} for i in range(4)]


def lines(rows: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# name -> (train.jsonl bytes, val.jsonl bytes or None for a missing file, the file named, line, what is said)
CASES = {
    "malformed JSON": (lines([GOOD[0], b'{"premise": "x",']), lines(GOOD), "train", 2, "not valid JSON"),
    "empty file": (b"\n\n", lines(GOOD), "train", None, "no rows (the file is empty)"),
    "missing field": (lines([GOOD[0], {"premise": "x", "label": "entailment"}]), lines(GOOD), "train", 2,
                      "lacks field(s) ['hypothesis']"),
    "bad label": (lines([*GOOD[:2], {**GOOD[0], "label": "maybe"}]), lines(GOOD), "train", 3,
                  "label 'maybe' is not one of ['entailment', 'not_entailment']"),
    "bad UTF-8": (lines([GOOD[0]]) + b'{"premise": "caf\xe9", "hypothesis": "h", "label": "entailment"}\n',
                  lines(GOOD), "train", 2, "not UTF-8 text (byte 0xe9"),
    "missing val split": (lines(GOOD), None, "val", None, "no such file: rte expects its val split there"),
    "unlabeled training rows": (lines([{k: v for k, v in r.items() if k != "label"} for r in GOOD]), lines(GOOD),
                                "train", 1, "no label; every training row needs one"),
    "val without labels": (lines(GOOD), lines([GOOD[0], {"premise": "p", "hypothesis": "h", "idx": 9}]), "val", 2,
                           "no label; every evaluation row needs one"),
    "not an object": (lines([GOOD[0], [1, 2]]), lines(GOOD), "train", 2, "expected a JSON object, got list"),
    "label of another type": (lines([*GOOD, {**GOOD[0], "label": {"z": [1]}}]), lines(GOOD), "train", 5,
                              "label {'z': [1]} is not one of"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_data_problem_is_one_line_before_the_backbone_loads(case, tiny_t5_dir, tmp_path, capsys):
    train, val, named, line, said = CASES[case]
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.jsonl").write_bytes(train)
    if val is not None:
        (tmp_path / "RTE" / "val.jsonl").write_bytes(val)
    argv = ["train", "--model", tiny_t5_dir, "--task", "rte", "--data_dir", str(tmp_path), "--output_dir",
            str(tmp_path / "run"), "--max_steps", "1", "--progress", "false", "--per_device_train_batch_size", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    path = Path(tmp_path) / "RTE" / f"{named}.jsonl"
    where = f"{path}:{line}: " if line else f"{path}: "
    assert err.startswith(f"lrpt train: error: {where}") and err.count("\n") == 1, err
    assert said in err, err
    assert "Loading weights" not in err and "Traceback" not in err  # refused before the backbone loads
