"""Few-shot statistics (`lrpt table` on K-shot runs over draws and seeds, `lrpt sweep --few_shot_draws`).

References: numpy by hand on the same numbers — the mean, the sample std, a percentile bootstrap of its own
(its own generator, twice the resamples: equal to the table's scipy interval within Monte-Carlo error), the law
of total variance written out, the paired differences subtracted run by run; the rows each run trained on,
compared between runs.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lrpt.eval.tasks import get_task
from lrpt.trainer.cli.main import main
from lrpt.trainer.train.data import load_run_data
from test_aggregate import OLDEST_REPORT
from test_fused import run_flags

# (method, draw, seed) -> RTE accuracy: draw 1 is easier for both methods, dpt beats pt by about 4 points
SCORES = {("pt", 0, 0): 0.50, ("pt", 0, 1): 0.56, ("pt", 0, 2): 0.53, ("pt", 1, 0): 0.66, ("pt", 1, 1): 0.61,
          ("pt", 1, 2): 0.64, ("dpt", 0, 0): 0.55, ("dpt", 0, 1): 0.58, ("dpt", 0, 2): 0.59, ("dpt", 1, 0): 0.70,
          ("dpt", 1, 1): 0.66, ("dpt", 1, 2): 0.67}


def write_runs(root: Path) -> Path:
    for (method, draw, seed), accuracy in SCORES.items():
        run = root / f"rte-{method}-seed{seed}-k16-draw{draw}"
        run.mkdir(parents=True)
        report = {**OLDEST_REPORT, "method": method, "output_dir": str(run),
                  "metrics": {"accuracy": accuracy, "unparsable": 0, "examples": 50},
                  "config": {"task": "rte", "method": method, "seed": seed, "model": "tiny-t5", "few_shot": 16,
                             "few_shot_draw": draw}}
        (run / "report.json").write_text(json.dumps(report))
    return root


def by_hand_interval(values: np.ndarray, resamples: int = 20_000) -> tuple[float, float]:
    rng = np.random.default_rng(12345)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def test_cell_statistics_and_paired_differences_against_numpy(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs")
    assert main(["table", str(runs), "--output", str(tmp_path / "out" / "fs")]) == 0
    markdown = capsys.readouterr().out
    assert "Few-shot statistics per cell" in markdown and "Paired differences" in markdown
    cells = {row["method"]: row for row in read_csv(tmp_path / "out" / "fs.stats.csv")}
    for method in ("pt", "dpt"):
        values = np.array([100 * v for (m, _, _), v in SCORES.items() if m == method])
        by_draw = [np.array([100 * v for (m, d, _), v in SCORES.items() if m == method and d == draw])
                   for draw in (0, 1)]
        between = sum(len(x) * (x.mean() - values.mean()) ** 2 for x in by_draw) / len(values)
        row = cells[method]
        assert int(row["runs"]) == 6 and float(row["mean"]) == pytest.approx(values.mean(), abs=1e-4)
        assert float(row["std"]) == pytest.approx(values.std(ddof=1), abs=1e-4)
        assert float(row["draw_share"]) == pytest.approx(between / values.var(), abs=1e-4)
        assert float(row["draw_share"]) + float(row["seed_share"]) == pytest.approx(1, abs=1e-4)
        low, high = by_hand_interval(values)
        assert float(row["ci_low"]) == pytest.approx(low, abs=0.4) and float(row["ci_high"]) == pytest.approx(high,
                                                                                                              abs=0.4)
    (pair,) = read_csv(tmp_path / "out" / "fs.paired.csv")
    a, b = pair["method_a"], pair["method_b"]
    assert {a, b} == {"pt", "dpt"} and int(pair["pairs"]) == 6
    differences = np.array([100 * (SCORES[(a, d, s)] - SCORES[(b, d, s)]) for d in (0, 1) for s in (0, 1, 2)])
    assert float(pair["mean_difference"]) == pytest.approx(differences.mean(), abs=1e-4)
    low, high = by_hand_interval(differences)
    assert float(pair["ci_low"]) == pytest.approx(low, abs=0.3) and float(pair["ci_high"]) == pytest.approx(high,
                                                                                                           abs=0.3)
    assert (high < 0) if a == "pt" else (low > 0)  # dpt is ahead on every run: the paired interval excludes 0
    assert (tmp_path / "out" / "fs.rte.png").stat().st_size > 10_000  # score against K, a band per method


def test_seeds_of_one_draw_train_on_its_rows(memorise_dir):
    """The K rows depend on (task, K, draw): two seeds of draw 1 see the same rows, draw 0 other ones; a run
    without a draw draws by its seed, as before."""
    task = get_task("rte")

    def rows(seed: int, draw: int | None) -> list[str]:
        return list(load_run_data(task, str(memorise_dir), seed, few_shot=2, draw=draw).train["source"])

    assert rows(0, 1) == rows(1, 1) != rows(0, 0)
    assert rows(3, None) == rows(0, 3)


def test_a_sweep_with_draws_trains_every_seed_on_every_draw(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    flags = [f for f in run_flags(tiny_t5_dir, memorise_dir, "--max_steps", "1") if f not in ("--task", "rte")]
    assert main(["sweep", "--tasks", "rte", "--methods", "pt", "--seeds", "0,1", "--few_shot", "2",
                 "--few_shot_draws", "2", "--output_dir", str(tmp_path), *flags]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "[lrpt sweep] 4 runs: 1 tasks x 1 methods x 2 seeds x 1 K x 2 draws"
    for draw in (0, 1):
        for seed in (0, 1):
            report = json.loads((tmp_path / f"rte-pt-seed{seed}-k2-draw{draw}" / "report.json").read_text())
            assert (report["config"]["few_shot_draw"], report["config"]["seed"]) == (draw, seed)
    assert len(read_csv(tmp_path / "table.stats.csv")) == 1 and (tmp_path / "table.rte.png").is_file()
    assert main(["sweep", "--tasks", "rte", "--methods", "pt", "--few_shot_draws", "2", "--output_dir",
                 str(tmp_path / "x"), *flags]) == 2
    assert "--few_shot_draws N needs --few_shot" in capsys.readouterr().err
