"""The results table from fake run reports: means ± std over seeds, Avg, few-shot rows."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from lrpt.eval.aggregate import collect, main, table

PARAMS = {"pt": 76_800, "dpt": 9_600}
# (method, task, seed) -> the task's metrics; table score: rte accuracy, cb mean(accuracy, macro_f1)
RUNS = {
    ("pt", "rte", 0): {"accuracy": 0.70}, ("pt", "rte", 1): {"accuracy": 0.80},          # 75.0 ± 7.1
    ("pt", "cb", 0): {"accuracy": 0.90, "macro_f1": 0.70},                               # 80
    ("pt", "cb", 1): {"accuracy": 0.80, "macro_f1": 0.80},                               # 80 -> 80.0 ± 0.0
    ("dpt", "rte", 0): {"accuracy": 0.60}, ("dpt", "rte", 1): {"accuracy": 0.66},        # 63.0 ± 4.2
    ("dpt", "cb", 0): {"accuracy": 0.50, "macro_f1": 0.30},                              # 40
    ("dpt", "cb", 1): {"accuracy": 0.70, "macro_f1": 0.50},                              # 60 -> 50.0 ± 14.1
}


def write_report(root: Path, method: str, task: str, seed: int, metrics: dict, few_shot: int | None = None) -> Path:
    run = root / f"{method}-{task}-{seed}{f'-k{few_shot}' if few_shot else ''}"
    run.mkdir(parents=True)
    config = {"task": task, "method": method, "seed": seed, "model": "tiny-t5"}
    if few_shot is not None:
        config["few_shot"] = few_shot
    report = {"config": config, "method": method, "trainable_params": PARAMS[method],
              "metrics": {**metrics, "unparsable": 0, "examples": 277}, "throughput": {}}
    (run / "report.json").write_text(json.dumps(report))
    return run


@pytest.fixture
def runs(tmp_path) -> Path:
    for (method, task, seed), metrics in RUNS.items():
        write_report(tmp_path / "runs", method, task, seed, metrics)
    return tmp_path / "runs"


def test_collect_reads_every_run(runs):
    records = collect(str(runs / "*"))
    assert len(records) == 8
    pt_cb = next(r for r in records if (r["method"], r["task"], r["seed"]) == ("pt", "cb", 0))
    assert pt_cb["score"] == pytest.approx(0.80) and pt_cb["trainable_params"] == 76_800
    assert pt_cb["few_shot"] is None
    assert len(collect(runs)) == 8                          # a directory of runs
    assert len(collect([runs / "pt-cb-0", runs / "pt-cb-1" / "report.json"])) == 2


def test_table_means_std_and_avg(runs):
    markdown, csv_text = table(collect(sorted(runs.iterdir())))
    lines = markdown.strip().splitlines()
    assert lines[0] == "| Method | Params | CB | RTE | Avg |"      # benchmark order, present tasks only
    assert lines[2] == "| dpt | 9,600 | 50.0 ± 14.1 | 63.0 ± 4.2 | 56.5 |"
    assert lines[3] == "| pt | 76,800 | 80.0 ± 0.0 | 75.0 ± 7.1 | 77.5 |"
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [r["method"] for r in rows] == ["dpt", "pt"]
    pt = rows[1]
    assert (pt["params"], pt["cb"], pt["cb_std"], pt["rte"], pt["rte_std"], pt["avg"]) == \
        ("76800", "80.0", "0.0", "75.0", "7.1", "77.5")


def test_few_shot_runs_get_their_own_rows(runs):
    write_report(runs, "pt", "rte", 0, {"accuracy": 0.55}, few_shot=32)
    markdown, csv_text = table(collect(runs))
    lines = markdown.strip().splitlines()
    assert lines[0] == "| K | Method | Params | CB | RTE | Avg |"
    assert lines[2].startswith("| full | ")
    assert lines[-1] == "| 32 | pt | 76,800 | – | 55.0 | – |"     # one seed: no ±; lacks CB: no Avg
    assert list(csv.DictReader(io.StringIO(csv_text)))[-1]["rte_std"] == ""


def test_a_seed_reported_twice_is_an_error(runs, tmp_path):
    write_report(tmp_path / "again", "pt", "rte", 0, {"accuracy": 0.1})
    with pytest.raises(ValueError, match="seed 0"):
        table(collect([runs, tmp_path / "again"]))


def test_missing_report_field_names_it(tmp_path):
    run = write_report(tmp_path, "pt", "rte", 0, {"accuracy": 0.5})
    report = json.loads((run / "report.json").read_text())
    del report["trainable_params"]
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(KeyError, match="trainable_params"):
        collect(run)
    with pytest.raises(FileNotFoundError):
        collect(tmp_path / "nothing-here")


def test_main_writes_markdown_and_csv(runs, tmp_path, capsys):
    assert main([str(runs), "--output", str(tmp_path / "out" / "superglue")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "out" / "superglue.md").read_text() == printed
    assert (tmp_path / "out" / "superglue.csv").read_text().startswith("method,params,cb,cb_std,rte,rte_std,avg\n")
