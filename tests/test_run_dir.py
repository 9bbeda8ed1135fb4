"""A run directory's config is its contract: a relaunch trains what the run trained, or is refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lrpt.trainer.rundir import checkpoint
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.rundir.contract import MAY_DIFFER, differences


def flags(model_dir, data_dir, out, *extra) -> list[str]:
    return ["train", "--model", model_dir, "--task", "rte", "--data_dir", str(data_dir), "--output_dir", str(out),
            "--method", "dpt",
            "--rank", "4", "--prompt_length", "6", "--per_device_train_batch_size", "2", "--max_steps", "4",
            "--save_steps", "2", "--progress", "false", "--seed", "5", *extra]


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the run directory: its bytes and its modification time (ns)."""
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_t5_dir, memorise_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "run"
    assert main(flags(tiny_t5_dir, memorise_dir, out)) == 0
    return out


def test_differences_name_each_trained_field_and_ignore_the_rest():
    base = RunConfig(learning_rate=0.3, task="rte", seed=1)
    other = RunConfig(learning_rate=0.1, task="cb", seed=1, per_device_eval_batch_size=3, progress=False,
                      output_dir="elsewhere")
    found = differences(base, other)
    assert found == ["task: 'rte' (run directory) != 'cb' (this launch)",
                     "learning_rate: 0.3 (run directory) != 0.1 (this launch)"]
    assert {"per_device_eval_batch_size", "progress", "output_dir"} <= MAY_DIFFER
    # a method option is trained too (None: the method's default)
    assert differences(base, RunConfig(learning_rate=0.3, task="rte", seed=1, rank=9)) == [
        "rank: None (run directory) != 9 (this launch)"]


def test_a_relaunch_with_other_settings_is_refused_before_loading(finished, tiny_t5_dir, memorise_dir, capsys):
    before = snapshot(finished)
    capsys.readouterr()
    argv = flags(tiny_t5_dir, memorise_dir, finished, "--learning_rate", "0.1", "--task", "cb", "--seed", "6",
                 "--prompt_length", "7")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Loading weights" not in err, err
    for text in ("task: 'rte' (run directory) != 'cb' (this launch)", "seed: 5 (run directory) != 6",
                 "learning_rate: 0.01 (run directory) != 0.1", "prompt_length: 6 (run directory) != 7",
                 "--overwrite_output_dir", f"--config {finished}/config.yaml"):
        assert text in err, err
    assert snapshot(finished) == before


def test_a_finished_run_relaunched_unchanged_touches_nothing(finished, tiny_t5_dir, memorise_dir, capsys):
    before = snapshot(finished)
    capsys.readouterr()
    # the same command (eval batch size and logging may differ), and the run's own config.yaml
    assert main(flags(tiny_t5_dir, memorise_dir, finished, "--per_device_eval_batch_size", "3",
                      "--logging_steps", "1")) == 0
    assert main(["train", "--config", str(finished / "config.yaml")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("is finished (report.json)") == 2, captured.out
    assert "Loading weights" not in captured.err
    assert snapshot(finished) == before


def test_overwrite_output_dir_starts_afresh(tiny_t5_dir, memorise_dir, tmp_path):
    """An old run (other seed, more steps) is replaced: the new run equals one trained in an empty directory."""
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    assert main(flags(tiny_t5_dir, memorise_dir, out, "--seed", "9", "--max_steps", "6", "--save_steps", "1",
                      "--save_total_limit", "5")) == 0
    (out / "notes.txt").write_text("mine")
    assert main(flags(tiny_t5_dir, memorise_dir, out, "--overwrite_output_dir")) == 0
    assert main(flags(tiny_t5_dir, memorise_dir, fresh)) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000002", "step-000004"]
    assert (out / "notes.txt").read_text() == "mine"  # only lrpt's own files are removed
    report, reference = (json.loads((d / "report.json").read_text()) for d in (out, fresh))
    assert report["train"]["loss_curve"] == reference["train"]["loss_curve"]
    assert len(report["train"]["loss_curve"]) == 4
    torch.testing.assert_close(load_file(out / "prompt.safetensors"), load_file(fresh / "prompt.safetensors"))
    # the config it leaves repeats the run; it never wipes it again
    assert main(["train", "--config", str(out / "config.yaml")]) == 0
    assert checkpoint.latest(out).name == "step-000004"


def test_a_fresh_start_among_old_checkpoints_is_refused(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-000100").mkdir(parents=True)
    assert main(flags(tiny_t5_dir, memorise_dir, out, "--resume_from_checkpoint", "none")) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of this run" in err and "--overwrite_output_dir" in err and err.count("\n") == 1
    assert not (out / "config.yaml").exists()


def test_a_crashed_run_resumes_with_settings_that_change_nothing_trained(finished, tiny_t5_dir, memorise_dir,
                                                                          tmp_path, monkeypatch):
    """Killed after its first checkpoint, relaunched with another eval batch size, logging and monitor: it
    resumes, to the loss curve of the uninterrupted run."""
    out = tmp_path / "run"
    real_save = checkpoint.save

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        main(flags(tiny_t5_dir, memorise_dir, out))
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert checkpoint.latest(out).name == "step-000002"
    assert main(flags(tiny_t5_dir, memorise_dir, out, "--per_device_eval_batch_size", "5", "--logging_steps", "1",
                      "--report_to", "none", "--save_total_limit", "1")) == 0
    resumed, uninterrupted = (json.loads((d / "report.json").read_text()) for d in (out, finished))
    assert resumed["train"]["loss_curve"] == uninterrupted["train"]["loss_curve"]


def test_a_copied_run_directory_is_the_one_its_config_repeats(finished, tmp_path, capsys):
    """config.yaml records the directory it was written in; `--config copy/config.yaml` must work on the copy
    (here: resume its last checkpoint and finish it), leaving the original untouched."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "report.json").unlink()  # the copy is of a run stopped after its last checkpoint
    before = snapshot(finished)
    assert main(["train", "--config", str(copy / "config.yaml")]) == 0
    assert f"resumed from {copy}/checkpoints/step-000004" in capsys.readouterr().out
    assert json.loads((copy / "report.json").read_text())["output_dir"] == str(copy)
    assert snapshot(finished) == before
