"""`lrpt sweep` over tasks x methods x seeds on tiny backbones, then `lrpt table`."""
from __future__ import annotations

import json

from lrpt.trainer.cli.main import main


def test_sweep_produces_the_aggregated_table(tiny_t5_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--tasks", "rte,cb", "--methods", "pt,dpt", "--seeds", "0,1", "--output_dir", str(out),
            "--model", tiny_t5_dir, "--prompt_length", "4", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--max_eval_samples", "6", "--decoding", "rank", "--progress", "false"]
    assert main(argv) == 0
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == sorted(f"{t}-{m}-seed{s}" for t in ("rte", "cb") for m in ("pt", "dpt") for s in (0, 1))
    reports = {name: json.loads((out / name / "report.json").read_text()) for name in runs}
    assert all(r["metrics"]["unparsable"] == 0 for r in reports.values())  # rank mode always answers

    table = (out / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = lines[0]
    assert "rte" in header.lower() and "cb" in header.lower() and "avg" in header.lower()
    # one row per method, each with its trainable parameter count
    for method in ("pt", "dpt"):
        (row,) = [line for line in lines if line.split("|")[1].strip().startswith(method)]
        params = reports[f"rte-{method}-seed0"]["trainable_params"]
        assert f"{params:,}" in row or str(params) in row
    # the table's RTE mean for pt is the mean over the two seeds (x100, one decimal)
    rte = [reports[f"rte-pt-seed{s}"]["metrics"]["accuracy"] * 100 for s in (0, 1)]
    (pt_row,) = [line for line in lines if line.split("|")[1].strip().startswith("pt")]
    assert f"{sum(rte) / 2:.1f}" in pt_row

    # a second sweep skips finished runs, and `lrpt table` rebuilds the same table from the runs
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 8
    assert main(["table", *[str(out / r) for r in runs]]) == 0
    assert sorted(capsys.readouterr().out.strip().splitlines()) == sorted(table.strip().splitlines())


def test_sweep_in_dpt_layout_reports_the_papers_metric_per_task(tiny_t5_dir, tmp_path):
    """CB, MultiRC and ReCoRD, where lrpt's own score averages two metrics and DPT's Table 1 names one: each
    cell is 100 × the metric the paper names (CB accuracy, MultiRC F1a, ReCoRD F1), read from the run's own
    report, mean over seeds; columns in the paper's order."""
    import csv
    import statistics

    out = tmp_path / "sweep"
    argv = ["sweep", "--tasks", "record,cb,multirc", "--methods", "dpt", "--seeds", "0,1", "--output_dir", str(out),
            "--layout", "dpt", "--model", tiny_t5_dir, "--prompt_length", "4", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--max_eval_samples", "6", "--decoding", "rank", "--progress",
            "false"]
    assert main(argv) == 0
    (row,) = list(csv.DictReader((out / "table.csv").read_text().splitlines()))
    named = {"cb": "accuracy", "multirc": "f1a", "record": "f1"}
    for task, metric in named.items():
        values = [100 * json.loads((out / f"{task}-dpt-seed{s}" / "report.json").read_text())["metrics"][metric]
                  for s in (0, 1)]
        assert float(row[task]) == round(statistics.mean(values), 2), (task, row[task], values)
    header = (out / "table.md").read_text().splitlines()[0]
    order = ["WSC", "WiC", "BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE"]
    assert [header.index(f"| {name} (") for name in order] == sorted(header.index(f"| {name} (") for name in order)
    assert header.index("# Trainable Params.") < header.index("| WSC (")
