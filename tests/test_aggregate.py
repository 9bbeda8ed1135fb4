"""The results table from fake run reports: means ± std over seeds, Avg, few-shot rows, in each layout
(lrpt's Task.score, DPT's Table 1, DePT's Table 1), and the published rows with Δ beside ours."""
from __future__ import annotations

import csv
import io
import json
import random
import statistics
from pathlib import Path

import pytest

from lrpt.eval.aggregate import TableError, collect, main, table
from lrpt.eval.layouts import DEPT_KEYS, DPT_KEYS, SCORE_KEYS
from lrpt.eval.tasks import TASKS

PARAMS = {"pt": 76_800, "dpt": 9_600, "residual": 693_000, "dept": 76_800}
# (method, task, seed) -> the task's metrics; table score: rte accuracy, cb mean(accuracy, macro_f1)
RUNS = {
    ("pt", "rte", 0): {"accuracy": 0.70}, ("pt", "rte", 1): {"accuracy": 0.80},          # 75.0 ± 7.1
    ("pt", "cb", 0): {"accuracy": 0.90, "macro_f1": 0.70},                               # 80
    ("pt", "cb", 1): {"accuracy": 0.80, "macro_f1": 0.80},                               # 80 -> 80.0 ± 0.0
    ("dpt", "rte", 0): {"accuracy": 0.60}, ("dpt", "rte", 1): {"accuracy": 0.66},        # 63.0 ± 4.2
    ("dpt", "cb", 0): {"accuracy": 0.50, "macro_f1": 0.30},                              # 40
    ("dpt", "cb", 1): {"accuracy": 0.70, "macro_f1": 0.50},                              # 60 -> 50.0 ± 14.1
}


# The keys every report.json has had since lrpt's first (the reader requires them; the table reads config, method,
# trainable_params and metrics): the values here are placeholders
OLDEST_REPORT = {"method": "pt", "trainable_params": 0, "kept_params": 0, "prompt_length": 8,
                 "prompt_output_length": 8, "optimizer_state_bytes": 0, "optimizer_state_bytes_per_rank": [0],
                 "metrics": {}, "train": {"steps": 1, "epochs": 1.0, "loss_first": 1.0, "loss_last": 1.0,
                                          "loss_curve": [1.0], "eval_history": []},
                 "throughput": {"per_rank": [{"steps_measured": 0, "warmup_steps": 0}]},
                 "memory": {"peak_bytes": [1], "measured_by": "test"}, "world_size": 1, "zero_stage": 0,
                 "output_dir": "", "versions": {}, "config": {}, "deepspeed_config": {}}


def write_report(root: Path, method: str, task: str, seed: int, metrics: dict, few_shot: int | None = None,
                 model: str = "tiny-t5") -> Path:
    run = root / f"{method}-{task}-{seed}{f'-k{few_shot}' if few_shot else ''}"
    run.mkdir(parents=True)
    config = {"task": task, "method": method, "seed": seed, "model": model}
    if few_shot is not None:
        config["few_shot"] = few_shot
    report = {**OLDEST_REPORT, "config": config, "method": method, "trainable_params": PARAMS[method],
              "metrics": {**metrics, "unparsable": 0, "examples": 277}, "output_dir": str(run)}
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
    assert lines[0] == "| Method | Params | CB (acc+F1)/2 | RTE (acc) | Avg |"    # benchmark order, present tasks
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
    lines = markdown.split("\n\n")[0].splitlines()  # the table; the few-shot statistics follow it
    assert lines[0] == "| K | Method | Params | CB (acc+F1)/2 | RTE (acc) | Avg |"
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
    with pytest.raises(TableError, match="trainable_params"):
        collect(run)
    with pytest.raises(FileNotFoundError):
        collect(tmp_path / "nothing-here")


def test_main_writes_markdown_and_csv(runs, tmp_path, capsys):
    assert main([str(runs), "--output", str(tmp_path / "out" / "superglue")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "out" / "superglue.md").read_text() == printed
    assert (tmp_path / "out" / "superglue.csv").read_text().startswith("method,params,cb,cb_std,rte,rte_std,avg\n")


# ---- layouts: which number a cell is ------------------------------------------------------------------------------

# What each task's metrics() returns, and the one DPT's Table 1 reports (its caption), written out independently
TASK_METRICS = {"boolq": ("accuracy",), "cb": ("accuracy", "macro_f1"), "copa": ("accuracy",),
                "multirc": ("f1a", "em"), "record": ("f1", "em"), "rte": ("accuracy",), "wic": ("accuracy",),
                "wsc": ("accuracy",)}
PAPER_METRIC = {**{t: "accuracy" for t in TASK_METRICS}, "multirc": "f1a", "record": "f1"}
PAPER_HEADERS = ["WSC (acc)", "WiC (acc)", "BoolQ (acc)", "CB (acc)", "COPA (acc)", "MultiRC (F1a)", "ReCoRD (F1)",
                 "RTE (acc)"]
PAPER_TASKS = ["wsc", "wic", "boolq", "cb", "copa", "multirc", "record", "rte"]
SEEDS = (0, 1, 2)


def fake_metrics(rng: random.Random, task: str) -> dict[str, float]:
    """Every metric the task reports, far enough apart that averaging two never equals either."""
    first = rng.uniform(0.55, 0.95)
    return {key: first - 0.25 * i for i, key in enumerate(TASK_METRICS[task])}


def write_sweep(root: Path, methods: tuple[str, ...], tasks: list[str], model: str = "tiny-t5",
                seed_of_values: int = 0) -> dict[tuple[str, str], list[dict]]:
    """report.json per method × task × seed; returns each (method, task)'s metrics over seeds."""
    rng = random.Random(seed_of_values)
    written: dict[tuple[str, str], list[dict]] = {}
    for method in methods:
        for task in tasks:
            for seed in SEEDS:
                metrics = fake_metrics(rng, task)
                write_report(root, method, task, seed, metrics, model=model)
                written.setdefault((method, task), []).append(metrics)
    return written


def md_rows(markdown: str) -> list[list[str]]:
    """The markdown table's rows (header first, separator dropped) as lists of cells; sections after the table (the
    few-shot statistics) left out."""
    lines = [line for line in markdown.split("\n\n")[0].splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for i, line in enumerate(lines) if i != 1]


def by_method(rows: list[dict]) -> dict[str, dict]:
    return {r["method"]: r for r in rows}


def expected_cells(runs: list[dict], task: str) -> tuple[float, float]:
    """The paper's number by hand: 100 × its metric, mean and sample std over the seeds."""
    values = [100 * m[PAPER_METRIC[task]] for m in runs]
    return statistics.mean(values), statistics.stdev(values)


def test_default_layout_header_names_each_metric(runs):
    header = md_rows(table(collect(runs))[0])[0]
    assert header == ["Method", "Params", "CB (acc+F1)/2", "RTE (acc)", "Avg"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_default_layout_header_says_what_task_score_computes(task):
    """The lrpt layout's header formula (SCORE_KEYS) is what Task.score really averages."""
    metrics = fake_metrics(random.Random(task), task)
    assert TASKS[task].score(metrics) == pytest.approx(statistics.mean(metrics[k] for k in SCORE_KEYS[task]))
    assert SCORE_KEYS[task] == TASK_METRICS[task]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_layout_metric_keys_are_what_the_task_reports(task):
    """Scoring the demo val set with gold predictions yields the keys the layouts read (DePT's: the metric DePT
    reports, for its five tasks)."""
    task_obj = TASKS[task]
    path = Path(__file__).parents[1] / "eval" / "demo_data" / task_obj.dir_name / "val.jsonl"
    examples = [e for line in path.read_text().splitlines() if line.strip()
                for e in task_obj.examples(json.loads(line), train=False)]
    metrics = task_obj.metrics([e["answers"][0] for e in examples], examples)
    assert set(TASK_METRICS[task]) <= set(metrics) and DPT_KEYS[task] == PAPER_METRIC[task] in metrics
    assert set(DEPT_KEYS) == set(DEPT_TASKS)
    if task in DEPT_KEYS:
        assert DEPT_KEYS[task] == DEPT_METRIC[task] in metrics


def test_dpt_layout_cells_are_the_papers_metric_over_seeds(tmp_path):
    written = write_sweep(tmp_path, ("pt", "dpt"), PAPER_TASKS)
    markdown, csv_text = table(collect(tmp_path), layout="dpt")
    rows = md_rows(markdown)
    assert rows[0] == ["Method", "# Trainable Params.", *PAPER_HEADERS, "Avg."]
    csv_rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert list(csv_rows[0])[:2] == ["method", "params"]
    assert list(csv_rows[0])[2:-1:2] == PAPER_TASKS                     # the paper's order, params first
    md_by_method = {r[0]: r for r in rows[1:]}
    for method, row in by_method(csv_rows).items():
        means = []
        for i, task in enumerate(PAPER_TASKS):
            mean, std = expected_cells(written[(method, task)], task)
            means.append(mean)
            assert float(row[task]) == pytest.approx(mean, abs=0.0051), (method, task)
            assert float(row[f"{task}_std"]) == pytest.approx(std, abs=0.0051), (method, task)
            md_mean, md_std = md_by_method[method][2 + i].split(" ± ")
            assert (float(md_mean), float(md_std)) == pytest.approx((mean, std), abs=0.0051)
        assert float(row["avg"]) == pytest.approx(statistics.mean(means), abs=0.0051)
        assert row["params"] == str(PARAMS[method])
    assert md_by_method["pt"][1] == "77K" and md_by_method["dpt"][1] == "10K"   # printed as the paper does


def test_dpt_layout_keeps_all_columns_and_avg_needs_all_eight(tmp_path):
    write_sweep(tmp_path, ("pt",), ["cb", "multirc", "record"])
    rows = md_rows(table(collect(tmp_path), layout="dpt")[0])
    assert len(rows[0]) == 2 + 8 + 1
    pt = rows[1]
    assert [pt[2 + PAPER_TASKS.index(t)] == "–" for t in PAPER_TASKS] == \
        [t not in ("cb", "multirc", "record") for t in PAPER_TASKS]
    assert pt[-1] == "–"


def test_dpt_layout_few_shot_rows_keep_their_k(tmp_path):
    write_sweep(tmp_path, ("pt",), PAPER_TASKS, model="t5-base")
    write_report(tmp_path, "pt", "cb", 0, {"accuracy": 0.5, "macro_f1": 0.3}, few_shot=16, model="t5-base")
    for reference in (False, True):
        rows = md_rows(table(collect(tmp_path), layout="dpt", reference=reference)[0])
        assert rows[0][0] == "K" and rows[-1][:3] == ["16", "pt", "77K"]
        assert float(rows[-1][2 + 1 + PAPER_TASKS.index("cb")]) == pytest.approx(50.0)
        assert not any(r[1].startswith("Δ") and r[0] == "16" for r in rows)      # no Δ for few-shot rows


def test_report_without_a_metric_is_one_line_naming_file_and_key(tmp_path, capsys):
    run = write_report(tmp_path, "pt", "multirc", 0, {"f1a_typo": 0.5, "em": 0.1})
    assert main([str(run), "--layout", "dpt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run / "report.json") in err and "'f1a'" in err


# ---- published rows beside ours --------------------------------------------------------------------------------------

# DPT arXiv 2310.10094 Table 1 (means, Avg.) and Table 3 (std), as given in the issue: the reference data
PAPER = {
    "T5-Small": {
        "Fine-tuning": ("60M", [67.94, 68.18, 77.06, 89.28, 59.00, 66.98, 55.64, 72.56], 69.58, None),
        "Prompt Tuning": ("51K", [63.14, 59.29, 66.78, 74.99, 58.33, 64.89, 52.75, 59.92], 62.51,
                          [1.10, 2.82, 1.28, 3.57, 1.15, 0.90, 0.30, 3.12]),
        "Residual PT": ("462K", [63.14, 60.96, 73.35, 72.02, 56.66, 65.12, 53.08, 67.02], 63.91,
                        [1.10, 5.7, 1.64, 4.12, 0.57, 0.51, 0.22, 3.68]),
        "DPT": ("6K", [63.78, 64.31, 71.74, 79.16, 58.00, 64.89, 53.27, 70.51], 65.70,
                [0.55, 0.65, 0.85, 4.12, 4.35, 0.90, 0.15, 1.98])},
    "T5-Base": {
        "Fine-tuning*": ("220M", [81.70, 69.30, 82.30, 91.70, 60.00, 76.90, 80.90, 84.50], 78.41, None),
        "Prompt Tuning": ("77K", [64.74, 59.97, 62.18, 70.23, 56.33, 72.69, 71.84, 56.43], 64.30,
                          [1.10, 6.30, 0.01, 1.02, 1.15, 0.24, 0.09, 0.20]),
        "Residual PT": ("693K", [67.94, 63.31, 80.00, 77.37, 56.66, 72.11, 72.21, 81.70], 71.41,
                        [0.55, 3.68, 10.11, 10.46, 2.08, 0.20, 0.13, 1.50]),
        "DPT": ("9K", [67.30, 68.49, 78.64, 78.56, 56.66, 71.22, 72.53, 81.94], 71.88,
                [0.96, 1.33, 0.79, 6.43, 2.08, 0.46, 0.10, 1.30])},
    "T5-Large": {
        "Fine-tuning*": ("770M", [88.50, 73.50, 88.30, 94.30, 87.00, 85.40, 89.20, 90.60], 87.10, None),
        "Prompt Tuning": ("102K", [76.52, 70.00, 84.09, 74.40, 62.00, 76.18, 84.51, 88.95], 77.08,
                          [1.92, 1.04, 0.82, 1.03, 0.00, 0.18, 0.09, 0.20]),
        "Residual PT": ("925K", [70.50, 72.25, 85.04, 73.21, 62.66, 76.46, 84.36, 88.92], 76.67,
                        [3.08, 0.56, 0.13, 1.79, 1.52, 0.04, 0.17, 0.75]),
        "DPT": ("11K", [79.16, 71.99, 84.76, 88.09, 62.33, 76.72, 84.46, 90.25], 79.72,
                [1.46, 0.63, 0.27, 2.06, 2.51, 0.39, 0.15, 0.36])},
}
PAPER_NAME = {"pt": "Prompt Tuning", "residual": "Residual PT", "dpt": "DPT"}


def assert_paper_row(row: dict, published: tuple) -> None:
    params, means, avg, stds = published
    assert row["params"] == params and float(row["avg"]) == avg
    for i, task in enumerate(PAPER_TASKS):
        assert float(row[task]) == means[i]
        assert row[f"{task}_std"] == ("" if stds is None else f"{stds[i]:.2f}")


@pytest.mark.parametrize("model, backbone", [("t5-small", "T5-Small"), ("google-t5/t5-base", "T5-Base"),
                                             ("t5-large", "T5-Large")])
def test_reference_rows_are_the_published_numbers_and_delta_is_ours_minus_paper(tmp_path, model, backbone):
    written = write_sweep(tmp_path, ("pt", "residual", "dpt"), PAPER_TASKS, model=model)
    markdown, csv_text = table(collect(tmp_path), layout="dpt", reference=True)
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    paper = {r["method"].removesuffix(" (paper)"): r for r in rows if r["source"] == "paper"}
    assert list(paper) == list(PAPER[backbone])                      # every published row of this backbone
    for name, published in PAPER[backbone].items():
        assert_paper_row(paper[name], published)
    deltas = {r["method"]: r for r in rows if r["source"] == "delta"}
    assert set(deltas) == {f"Δ {m} − paper" for m in PAPER_NAME}
    for method, name in PAPER_NAME.items():
        _, means, avg, _ = PAPER[backbone][name]
        ours = [expected_cells(written[(method, t)], t)[0] for t in PAPER_TASKS]
        delta = deltas[f"Δ {method} − paper"]
        for i, task in enumerate(PAPER_TASKS):
            assert float(delta[task]) == pytest.approx(ours[i] - means[i], abs=0.0051), (method, task)
        assert float(delta["avg"]) == pytest.approx(statistics.mean(ours) - avg, abs=0.0051)
    order = [r["method"] for r in rows]
    assert all(order.index(f"Δ {m} − paper") == order.index(m) + 1 for m in PAPER_NAME)   # Δ under its row
    assert "2310.10094" in markdown


def test_published_avg_is_the_mean_of_its_cells():
    """Guards the reference data against a typo: T5-Base DPT is the paper's own 0.04 slip."""
    for rows in PAPER.values():
        for _, means, avg, _ in rows.values():
            assert statistics.mean(means) == pytest.approx(avg, abs=0.05)


def test_reference_backbone_for_a_local_path(tmp_path, capsys):
    write_sweep(tmp_path / "runs", ("dpt",), ["cb", "rte"], model="/models/my-t5")
    assert main([str(tmp_path / "runs"), "--layout", "dpt", "--reference"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'/models/my-t5'" in err and "--reference_backbone" in err
    assert main([str(tmp_path / "runs"), "--layout", "dpt", "--reference_backbone", "t5-large",
                 "--output", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert_paper_row(next(r for r in rows if r["method"] == "DPT (paper)"), PAPER["T5-Large"]["DPT"])
    delta = next(r for r in rows if r["source"] == "delta")
    assert delta["avg"] == "" and delta["wsc"] == ""                 # only CB and RTE ran: no Avg, no WSC Δ


@pytest.mark.parametrize("flags, message", [
    (["--layout", "dpt", "--reference_backbone", "t5-3b"], "t5-small, t5-base, t5-large only"),
    (["--reference"], "--layout dpt"),
    (["--reference"], "--layout dept"),
])
def test_reference_refusals_are_one_line(tmp_path, capsys, flags, message):
    write_sweep(tmp_path / "runs", ("pt",), ["rte"], model="t5-base")
    assert main([str(tmp_path / "runs"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lrpt table: error: ") and message in err


# ---- DePT's Table 1 (arXiv 2309.05173), SuperGLUE on T5-Base ------------------------------------------------------

# Its columns in its order, the metric each is (its src/metrics.py: MultiRC F1 over every answer; CB accuracy), and
# its DePT row: ZhengxiangShi/DePT checkpoints/superglue-*/test_results.json (commit f0266a7) to one decimal, Mean as
# the paper prints it
DEPT_TASKS = ["multirc", "boolq", "wic", "wsc", "cb"]
DEPT_HEADERS = ["MultiRC (F1a)", "BoolQ (acc)", "WiC (acc)", "WSC (acc)", "CB (acc)"]
DEPT_METRIC = {"multirc": "f1a", "boolq": "accuracy", "wic": "accuracy", "wsc": "accuracy", "cb": "accuracy"}
DEPT_ROW = ("76.8K", [74.3, 79.3, 68.7, 67.3, 92.9], 76.5)
# two seeds of method dept per task, each metric a task reports, the paper's far from the others
DEPT_RUNS = {
    "multirc": [{"f1a": 0.70, "em": 0.20}, {"f1a": 0.72, "em": 0.30}],        # F1a 71.0 ± 1.4
    "boolq": [{"accuracy": 0.80}, {"accuracy": 0.78}],                         # 79.0 ± 1.4
    "wic": [{"accuracy": 0.70}, {"accuracy": 0.68}],                           # 69.0 ± 1.4
    "wsc": [{"accuracy": 0.60}, {"accuracy": 0.64}],                           # 62.0 ± 2.8
    "cb": [{"accuracy": 0.90, "macro_f1": 0.50}, {"accuracy": 0.94, "macro_f1": 0.60}],   # acc 92.0 ± 2.8
}


def write_dept_runs(root: Path, model: str = "t5-base") -> Path:
    for task, seeds in DEPT_RUNS.items():
        for seed, metrics in enumerate(seeds):
            write_report(root, "dept", task, seed, metrics, model=model)
    return root


def test_dept_layout_columns_and_cells_are_depts(tmp_path):
    markdown, csv_text = table(collect(write_dept_runs(tmp_path)), layout="dept")
    rows = md_rows(markdown)
    assert rows[0] == ["Method", "Params", *DEPT_HEADERS, "Mean"]
    # by hand: F1a alone (not (F1a+EM)/2 = 48.0), CB accuracy alone (not (acc+F1)/2 = 73.5); Mean of the five
    assert rows[1] == ["dept", "76,800", "71.0 ± 1.4", "79.0 ± 1.4", "69.0 ± 1.4", "62.0 ± 2.8", "92.0 ± 2.8", "74.6"]
    csv_row = next(csv.DictReader(io.StringIO(csv_text)))
    assert list(csv_row)[2:-1:2] == DEPT_TASKS
    assert [csv_row[t] for t in DEPT_TASKS] + [csv_row["avg"]] == ["71.0", "79.0", "69.0", "62.0", "92.0", "74.6"]


def test_dept_reference_is_the_published_row_and_delta_is_ours_minus_paper(tmp_path):
    write_dept_runs(tmp_path / "runs")
    write_report(tmp_path / "runs", "pt", "cb", 0, {"accuracy": 0.5, "macro_f1": 0.3}, model="t5-base")
    assert main([str(tmp_path / "runs"), "--layout", "dept", "--reference", "--output", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out.md").read_text()
    rows = md_rows(markdown)
    params, means, mean = DEPT_ROW
    assert rows[1] == ["DePT (paper)", params, *[f"{m:.1f}" for m in means], f"{mean:.1f}"]
    assert rows[2][0] == "dept"
    # Δ by hand: 71.0 − 74.3, 79.0 − 79.3, 69.0 − 68.7, 62.0 − 67.3, 92.0 − 92.9; Mean 74.6 − 76.5
    assert rows[3] == ["Δ dept − paper", "", "-3.3", "-0.3", "+0.3", "-5.3", "-0.9", "-1.9"]
    assert [r[0] for r in rows[4:]] == ["pt"]                                 # DePT has no PT row: no Δ under pt
    csv_rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    paper = next(r for r in csv_rows if r["source"] == "paper")
    assert [float(paper[t]) for t in DEPT_TASKS] == means and paper["cb_std"] == "" and float(paper["avg"]) == mean
    delta = next(r for r in csv_rows if r["source"] == "delta")
    assert [float(delta[t]) for t in DEPT_TASKS] == pytest.approx([-3.3, -0.3, 0.3, -5.3, -0.9], abs=1e-9)
    assert float(delta["avg"]) == pytest.approx(-1.9, abs=1e-9)
    assert "DePT (arXiv 2309.05173)" in markdown and "half" in markdown and "2310.10094" not in markdown


def test_published_dept_mean_is_the_mean_of_its_cells():
    """Guards the reference data against a typo."""
    assert statistics.mean(DEPT_ROW[1]) == pytest.approx(DEPT_ROW[2], abs=0.05)


@pytest.mark.parametrize("model, flags, message", [
    ("t5-large", [], "no published DePT rows for model 't5-large' (DePT, arXiv 2309.05173, ran t5-base)"),
    ("/models/my-t5", [], "add --reference_backbone t5-base"),
    ("/models/my-t5", ["--reference_backbone", "t5-small"], "DePT's Table 1 has rows for t5-base only"),
])
def test_dept_reference_for_a_backbone_it_did_not_run_is_refused(tmp_path, capsys, model, flags, message):
    write_dept_runs(tmp_path / "runs", model=model)
    assert main([str(tmp_path / "runs"), "--layout", "dept", "--reference", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lrpt table: error: ") and message in err


def test_dept_reference_backbone_for_a_local_path(tmp_path):
    write_dept_runs(tmp_path / "runs", model="/models/my-t5")
    rows = md_rows(table(collect(tmp_path / "runs"), layout="dept", reference_backbone="t5-base")[0])
    assert [r[0] for r in rows[1:]] == ["DePT (paper)", "dept", "Δ dept − paper"]
