"""Issue 30: a fused group preempted after one of its runs finished, DeepSpeed settings that would override or
unpickle behind lrpt's back, a sweep's lists (empty, repeated) and its --overwrite_output_dir, and a fused
sweep over a backbone that trains with dropout (`--fuse auto`, what the Slurm templates' FUSE=1 runs)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from transformers import T5Config

from lrpt.trainer.runtime import preempt
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.config.ds_config import resolve_ds_config
from lrpt.trainer.backbone.presets import save_preset
from test_fused import assert_same_run

FLAGS = ["--data_dir", "{data}", "--prompt_length", "4", "--per_device_train_batch_size", "2", "--warmup_ratio",
         "0.25", "--decoding", "rank", "--progress", "false"]


def flags(model_dir: str, data_dir, *extra: str) -> list[str]:
    return ["--model", model_dir, *[f.format(data=data_dir) for f in FLAGS], *extra]


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---- item 4: a fused group preempted after one of its runs finished -------------------------------------------

# two runs of one task fused: K = 2 rows train 3 steps (1 a epoch), K = 4 rows train 6 (2 an epoch)
GROUP = ["--tasks", "rte", "--methods", "dpt", "--seeds", "0", "--few_shot", "2,4"]
SHORT, LONG = "rte-dpt-seed0-k2", "rte-dpt-seed0-k4"


def test_a_fused_group_preempted_after_a_run_finished_never_trains_it_again(tiny_t5_dir, memorise_dir, tmp_path,
                                                                             monkeypatch, capsys):
    """SIGUSR1 during the group's step 4: the K = 2 run finished at step 3, the K = 4 run is at step 4. The
    finished run's report is there when the job exits 75; relaunched, it is left as it is (same bytes, not trained)
    and the other run resumes; both equal their runs trained alone."""
    run_flags = flags(tiny_t5_dir, memorise_dir, "--num_train_epochs", "3", "--learning_rate", "0.05")
    assert main(["sweep", *GROUP, "--output_dir", str(tmp_path / "alone"), *run_flags]) == 0
    fused = tmp_path / "fused"
    argv = ["sweep", *GROUP, "--output_dir", str(fused), "--fuse", *run_flags]
    real, calls = preempt.stop_requested, []

    def signal_at_step_4():  # asked once per step of the group
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real()

    monkeypatch.setattr(preempt, "stop_requested", signal_at_step_4)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == preempt.EXIT_CODE
    monkeypatch.setattr(preempt, "stop_requested", real)
    report = fused / SHORT / "report.json"
    assert report.is_file() and not (fused / LONG / "report.json").exists()
    assert (fused / LONG / "checkpoints" / "latest").read_text() == "step-000004"
    written, saved = report.read_bytes(), (fused / SHORT / "checkpoints" / "latest").stat().st_mtime_ns
    capsys.readouterr()

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{fused / SHORT} is finished" in out and f"resumed from {fused / LONG}/checkpoints/step-000004" in out
    assert report.read_bytes() == written and (fused / SHORT / "checkpoints" / "latest").stat().st_mtime_ns == saved
    assert json.loads(report.read_text())["train"]["steps"] == 3
    assert_same_run(fused / SHORT, tmp_path / "alone" / SHORT, [LONG])
    assert_same_run(fused / LONG, tmp_path / "alone" / LONG, [SHORT])


# ---- items 5 and 6: the DeepSpeed JSON ----------------------------------------------------------------------

def ds_json(tmp_path: Path, **fields) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 0}, **fields}))
    return str(path)


def test_gradient_clipping_that_contradicts_max_grad_norm_is_refused(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *flags(tiny_t5_dir, memorise_dir, "--task", "rte", "--max_steps", "1", "--output_dir", str(out)),
            "--deepspeed", ds_json(tmp_path, gradient_clipping=0.5), "--max_grad_norm", "1.0"]
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert "gradient_clipping=0.5" in err and "--max_grad_norm 1.0" in err and '"auto"' in err
    assert "Loading weights" not in err and not (out / "config.yaml").exists()  # before any weight loads
    agreeing = RunConfig(deepspeed=ds_json(tmp_path, gradient_clipping=0.5), max_grad_norm=0.5)
    assert resolve_ds_config(agreeing, world_size=1).json["gradient_clipping"] == 0.5


def test_universal_checkpoint_loading_is_refused(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    """DeepSpeed reads a universal checkpoint's zero/ files with torch.load(weights_only=False)."""
    out = tmp_path / "run"
    argv = ["train", *flags(tiny_t5_dir, memorise_dir, "--task", "rte", "--max_steps", "1", "--output_dir", str(out)),
            "--deepspeed", ds_json(tmp_path, checkpoint={"load_universal": True})]
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert "checkpoint.load_universal" in err and not (out / "config.yaml").exists()


# ---- items 7 and 14: the sweep's lists and --overwrite_output_dir ---------------------------------------------

@pytest.mark.parametrize("lists, named", [
    (["--tasks", "rte", "--methods", "pt,pt", "--seeds", "0"], "--methods lists pt more than once"),
    (["--tasks", "rte", "--methods", "pt", "--seeds", "0,0"], "--seeds lists 0 more than once"),
    (["--tasks", "rte,rte", "--methods", "pt", "--seeds", "0"], "--tasks lists rte more than once"),
    (["--tasks", "rte", "--methods", "pt", "--seeds", "0", "--few_shot", "4,4"], "--few_shot lists 4 more than once"),
    (["--tasks", ",", "--methods", "pt", "--seeds", "0"], "--tasks is empty"),
    (["--tasks", "rte", "--methods", "pt", "--seeds", ""], "--seeds is empty"),
    (["--tasks", "rte", "--methods", ",", "--seeds", "0"], "--methods is empty"),
    (["--tasks", "rte", "--methods", "pt", "--seeds", "0", "--few_shot", ""], "--few_shot is empty"),
], ids=["methods", "seeds", "tasks", "few_shot", "empty-tasks", "empty-seeds", "empty-methods", "empty-few_shot"])
@pytest.mark.parametrize("fuse", [[], ["--fuse"]], ids=["in-turn", "fused"])
def test_empty_or_repeated_sweep_lists_are_refused_before_anything_trains(lists, named, fuse, tiny_t5_dir,
                                                                          memorise_dir, tmp_path, capsys):
    argv = ["sweep", *lists, *fuse, "--output_dir", str(tmp_path), *flags(tiny_t5_dir, memorise_dir,
                                                                            "--max_steps", "1")]
    assert main(argv) == 2
    assert named in one_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("fuse", [[], ["--fuse"]], ids=["in-turn", "fused"])
def test_sweep_overwrite_output_dir_starts_every_run_afresh(fuse, tiny_t5_dir, memorise_dir, tmp_path, capsys):
    """As `lrpt train --overwrite_output_dir`: a finished run trains again, and one of other settings too."""
    sweep = ["sweep", "--tasks", "rte", "--methods", "pt", "--seeds", "0", "--output_dir", str(tmp_path), *fuse]
    run_flags = flags(tiny_t5_dir, memorise_dir, "--max_steps", "2")
    report = tmp_path / "rte-pt-seed0" / "report.json"
    assert main([*sweep, *run_flags]) == 0
    first = json.loads(report.read_text())
    capsys.readouterr()
    assert main([*sweep, *run_flags, "--overwrite_output_dir"]) == 0
    assert "done before, skipped" not in capsys.readouterr().out
    again = json.loads(report.read_text())
    assert again["throughput"] != first["throughput"] and again["train"]["loss_curve"] == first["train"]["loss_curve"]
    assert main([*sweep, *run_flags, "--learning_rate", "0.1", "--overwrite_output_dir"]) == 0
    assert json.loads(report.read_text())["config"]["learning_rate"] == 0.1


# ---- item 8: a fused sweep over a backbone that trains with dropout --------------------------------------------

def dropout_t5(directory: Path) -> str:
    """A tiny T5 whose config has dropout_rate 0.1, as T5 v1.1's (the Slurm sweeps' default backbone) has."""
    path = save_preset("tiny-t5", str(directory), width=32)
    config = T5Config.from_pretrained(path)
    config.dropout_rate = 0.1
    config.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dropout_t5_dir(tmp_path_factory) -> str:
    return dropout_t5(tmp_path_factory.mktemp("dropout-t5"))


def test_fuse_auto_trains_a_group_that_cannot_share_a_pass_in_turn(dropout_t5_dir, memorise_dir, tmp_path, capsys):
    """`--fuse` refuses a backbone with dropout; `--fuse auto` (the Slurm sweeps' FUSE=1) trains that group's runs
    one after another, each exactly its run alone, and says why."""
    sweep = ["sweep", "--tasks", "rte", "--methods", "pt,dpt", "--seeds", "0"]
    run_flags = flags(dropout_t5_dir, memorise_dir, "--max_steps", "3")
    assert main([*sweep, "--output_dir", str(tmp_path / "strict"), "--fuse", *run_flags]) == 2
    assert "dropout_rate=0.1" in one_line(capsys.readouterr().err)
    assert main([*sweep, "--output_dir", str(tmp_path / "alone"), *run_flags]) == 0
    capsys.readouterr()
    assert main([*sweep, "--output_dir", str(tmp_path / "auto"), "--fuse", "auto", *run_flags]) == 0
    out = capsys.readouterr().out
    assert "group 1/1, not fused (" in out and "dropout_rate=0.1" in out and "one after another" in out
    for name in ("rte-pt-seed0", "rte-dpt-seed0"):
        got, want = (json.loads((tmp_path / d / name / "report.json").read_text()) for d in ("auto", "alone"))
        assert "fused" not in got and got["train"]["loss_curve"] == want["train"]["loss_curve"]
        assert got["metrics"] == want["metrics"]
    assert (tmp_path / "auto" / "table.md").read_text() == (tmp_path / "alone" / "table.md").read_text()
