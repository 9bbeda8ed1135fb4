"""`lrpt sweep --grid`: any run setting as a sweep axis, grid points fused in one pass where their fields' Policy
lets a fused group's runs differ.

References: the grid's points written out by hand; each fused run against the same run trained alone by
`lrpt sweep --grid` without --fuse (test_fused.assert_same_run); each run's config.yaml read back as YAML.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lrpt.trainer.cli.main import main
from lrpt.trainer.config.grid import parse_grid, point_name, points
from lrpt.trainer.errors import LrptError
from test_fused import assert_same_run, run_flags

GRID = ["--grid", "learning_rate=0.1,0.03", "rank=2,4"]
NAMES = [f"rte-dpt-seed0-learning_rate{lr}-rank{r}" for lr in ("0.1", "0.03") for r in (2, 4)]


def test_the_grid_is_every_combination_of_its_axes_named_by_its_point():
    axes = parse_grid(["learning_rate=0.1,0.03", "rank=2,4", "prompt-length=20"])  # - spelling of a field
    assert [point_name(p) for p in points(axes)] == [
        "-learning_rate0.1-rank2-prompt_length20", "-learning_rate0.1-rank4-prompt_length20",
        "-learning_rate0.03-rank2-prompt_length20", "-learning_rate0.03-rank4-prompt_length20"]
    assert [a.field for a in parse_grid(["batch=2,4"])] == ["per_device_train_batch_size"]  # an alias
    assert points([]) == [()]


@pytest.mark.parametrize("items, said", [
    (["learning_rat=0.1"], "--grid learning_rat: not a setting of a run"),
    (["seed=1,2"], "--grid seed: the sweep sets it itself; use --seeds"),
    (["learning_rate=0.1,0.1"], "each value once"),
    (["learning_rate"], "write FIELD=V1,V2"),
    (["rank=2", "rank=4"], "names rank twice"),
    (["deepspeed=a/b,a_b"], "each value once"),  # two values that would name one directory
])
def test_a_grid_that_cannot_be_trained_as_written_is_refused(items, said):
    with pytest.raises(LrptError, match=said):
        parse_grid(items)


def test_a_grid_axis_given_also_as_a_flag_is_refused(capsys, tmp_path):
    code = main(["sweep", "--tasks", "rte", "--methods", "dpt", "--seeds", "0", "--output_dir", str(tmp_path),
                 *GRID, "--learning-rate", "0.2"])
    assert code == 2 and "--learning_rate is both a flag of every run and an axis of --grid" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_grid_points_fused_in_one_pass_equal_the_runs_trained_alone(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    """learning_rate and rank may differ within a fused group (their Policy: per run): the four points train as one
    group, and each equals its run trained alone, which trained at the point's values (config.yaml)."""
    flags = [f for f in run_flags(tiny_t5_dir, memorise_dir, "--max_steps", "4") if f not in ("--task", "rte")]
    sweep = ["sweep", "--tasks", "rte", "--methods", "dpt", "--seeds", "0", *GRID]
    assert main([*sweep, "--output_dir", str(tmp_path / "alone"), *flags]) == 0
    out = capsys.readouterr().out
    assert "4 runs: 1 tasks x 1 methods x 1 seeds x grid (2 learning_rate x 2 rank)" in out.splitlines()[0]
    assert main([*sweep, "--output_dir", str(tmp_path / "fused"), "--fuse", *flags]) == 0
    assert "group 1/1, fused: " + ", ".join(NAMES) in capsys.readouterr().out
    table = (tmp_path / "fused" / "table.md").read_text()
    assert table == (tmp_path / "alone" / "table.md").read_text()
    assert all(f"| dpt learning_rate={lr} rank={r} |" in table for lr in ("0.1", "0.03") for r in (2, 4))
    for name in NAMES:
        config = yaml.safe_load((tmp_path / "alone" / name / "config.yaml").read_text())
        assert f"-learning_rate{config['learning_rate']}-rank{config['rank']}" in name
        assert_same_run(tmp_path / "fused" / name, tmp_path / "alone" / name, [n for n in NAMES if n != name])


def test_points_that_differ_in_a_setting_a_fused_group_shares_train_in_groups_of_their_own(tiny_t5_dir, memorise_dir,
                                                                                           tmp_path, capsys):
    flags = [f for f in run_flags(tiny_t5_dir, memorise_dir, "--max_steps", "2") if f not in ("--task", "rte")]
    code = main(["sweep", "--tasks", "rte", "--methods", "pt", "--seeds", "0,1", "--grid", "max_source_length=32,48",
                 "--output_dir", str(tmp_path), "--fuse", *flags])
    assert code == 0
    out = capsys.readouterr().out
    assert "group 1/2, fused: rte-pt-seed0-max_source_length32, rte-pt-seed1-max_source_length32" in out
    assert "group 2/2, fused: rte-pt-seed0-max_source_length48, rte-pt-seed1-max_source_length48" in out
    assert sorted(p.name for p in Path(tmp_path).iterdir() if p.is_dir()) == sorted(
        f"rte-pt-seed{s}-max_source_length{n}" for n in (32, 48) for s in (0, 1))


# ---- choosing a grid's point per task and method ---------------------------------------------------------------

# (learning_rate, seed) -> (dev score of the selected step, validation accuracy): dev ranks 0.1 first
# (mean 0.85 against 0.70), validation ranks 0.01 first (mean 0.72 against 0.61)
GRID_RUNS = {("0.1", 0): (0.9, 0.60), ("0.1", 1): (0.8, 0.62), ("0.01", 0): (0.7, 0.70), ("0.01", 1): (0.7, 0.74)}


def grid_reports(root: Path, protocol: str = "dev") -> Path:
    from test_aggregate import OLDEST_REPORT

    for (rate, seed), (dev, val) in GRID_RUNS.items():
        run = root / f"rte-dpt-seed{seed}-learning_rate{rate}"
        run.mkdir(parents=True)
        history = [{"step": 1, "split": "dev", "score": 1.0 - dev, "accuracy": 1.0 - dev},  # not the selected step
                   {"step": 2, "split": "dev", "score": dev, "accuracy": dev}] if protocol == "dev" else []
        report = {**OLDEST_REPORT, "method": "dpt", "trainable_params": 100, "output_dir": str(run),
                  "metrics": {"accuracy": val, "unparsable": 0, "examples": 50},
                  "train": {**OLDEST_REPORT["train"], "steps": 3, "eval_history": history},
                  "selection": {"protocol": protocol, "step": 2 if protocol == "dev" else 3, "optimistic": False},
                  "config": {"task": "rte", "method": "dpt", "seed": seed, "model": "tiny-t5",
                             "learning_rate": float(rate), "selection": protocol}}
        (run / "report.json").write_text(json.dumps(report))
    return root


def test_select_takes_the_dev_best_point_and_reports_its_validation_score(tmp_path, capsys):
    """By hand: dev picks learning_rate 0.1, whose validation accuracies 60 and 62 give 61.0 ± 1.4; choosing on
    validation instead picks 0.01 (72.0 ± 2.8), and is marked optimistic."""
    runs = grid_reports(tmp_path)
    assert main(["table", str(runs), "--select", "learning_rate"]) == 0
    markdown = capsys.readouterr().out
    assert "| dpt | 100 | 61.0 ± 1.4 | 61.0 |" in markdown
    assert "- dpt: rte: learning_rate=0.1 (dev 85.0, mean of 2 runs; 2 points)" in markdown
    assert main(["table", str(runs), "--select", "learning_rate", "--select_on", "val"]) == 0
    markdown = capsys.readouterr().out
    assert "| dpt (point best on val) | 100 | 72.0 ± 2.8 | 72.0 |" in markdown and "optimistic" in markdown
    assert main(["table", str(runs), "--by", "learning_rate"]) == 0
    markdown = capsys.readouterr().out
    assert "| dpt learning_rate=0.1 | 100 | 61.0 ± 1.4 |" in markdown
    assert "| dpt learning_rate=0.01 | 100 | 72.0 ± 2.8 |" in markdown


def test_a_grid_tabulated_without_its_fields_or_dev_scores_is_refused(tmp_path, capsys):
    runs = grid_reports(tmp_path / "dev")
    assert main(["table", str(runs)]) == 2
    assert "--by FIELD... (a row per point) or --select FIELD..." in capsys.readouterr().err
    final = grid_reports(tmp_path / "final", protocol="final")
    assert main(["table", str(final), "--select", "learning_rate"]) == 2
    err = capsys.readouterr().err
    assert "no dev score (trained with --selection final)" in err and "--select_on val" in err
    assert main(["table", str(final), "--select", "learning_rate", "--select_on", "val"]) == 0


def test_plan_of_a_grid_is_the_plan_of_its_largest_point(capsys):
    """Reference: each point planned alone, its flags given directly; the grid's plan is the one that needs most."""
    import json as _json

    run = ["plan", "--model", "llama-7b", "--zero", "3", "--gpus", "8", "--method", "dpt", "--json"]
    alone = {}
    for length in ("20", "400"):
        for batch in ("4", "8"):
            main([*run, "--prompt_length", length, "--batch", batch])
            alone[(length, batch)] = _json.loads(capsys.readouterr().out)
    main([*run, "--grid", "prompt_length=20,400", "batch=4,8"])
    planned = _json.loads(capsys.readouterr().out)
    largest = max(alone, key=lambda point: alone[point]["needed"])
    assert planned.pop("grid_point") == {"prompt_length": largest[0], "per_device_train_batch_size": largest[1]}
    assert planned == alone[largest] and len({p["needed"] for p in alone.values()}) == 4


def test_a_sweep_file_gives_the_same_sweep_as_its_flags(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    flags = [f for f in run_flags(tiny_t5_dir, memorise_dir, "--max_steps", "1") if f not in ("--task", "rte")]
    file = tmp_path / "sweep.yaml"
    file.write_text("tasks: [rte]\nmethods: [pt]\nseeds: [0]\ngrid:\n  learning_rate: [0.1, 0.03]\n")
    assert main(["sweep", "--sweep_file", str(file), "--output_dir", str(tmp_path / "file"), *flags]) == 0
    from_file = capsys.readouterr().out.splitlines()[0]
    assert main(["sweep", "--tasks", "rte", "--methods", "pt", "--seeds", "0", "--grid", "learning_rate=0.1,0.03",
                 "--output_dir", str(tmp_path / "flags"), *flags]) == 0
    assert capsys.readouterr().out.splitlines()[0] == from_file == (
        "[lrpt sweep] 2 runs: 1 tasks x 1 methods x 1 seeds x grid (2 learning_rate)")
    names = ["rte-pt-seed0-learning_rate0.1", "rte-pt-seed0-learning_rate0.03"]
    for name in names:
        assert (tmp_path / "file" / name / "report.json").is_file() and (tmp_path / "flags" / name).is_dir()
    assert (tmp_path / "file" / "table.md").read_text() == (tmp_path / "flags" / "table.md").read_text()
    file.write_text("tasks: [rte]\nmodel: t5-small\n")
    assert main(["sweep", "--sweep_file", str(file), "--output_dir", str(tmp_path / "bad")]) == 2
    assert "model not among tasks, methods, seeds, few_shot, grid" in capsys.readouterr().err
