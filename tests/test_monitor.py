"""--report_to: the curves DeepSpeed's monitor writes while a run trains, against the report, a hand
computed schedule, the model's own gradients, and a resumed run."""
from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch import clean_env
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import load_config
from lrpt.trainer.train.loop import setup
from lrpt.trainer.rundir.monitor import read_csv


def flags(model: str, data: Path, out: Path, *more: str) -> list[str]:
    return ["--model", model, "--task", "rte", "--data_dir", str(data), "--output_dir", str(out), "--method", "dpt",
            "--prompt_length", "6", "--per_device_train_batch_size", "2", "--warmup_ratio", "0.25", "--seed", "3",
            "--learning_rate", "0.3", "--progress", "false", *more]


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_csv_holds_every_logging_step(tiny_t5_dir, memorise_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *flags(tiny_t5_dir, memorise_dir, out, "--max_steps", "4", "--logging_steps", "1")]) == 0
    curve = report(out)["train"]["loss_curve"]
    loss = read_csv(out, "Train/Samples/loss")
    assert [v for _, v in loss] == curve and len(curve) == 4
    assert [x for x, _ in loss] == [2, 4, 6, 8]  # DeepSpeed's axis: samples = steps x global batch 2
    # DeepSpeed's own learning-rate event, against the linear schedule by hand: warm-up ceil(0.25 * 4) = 1
    # step, then 0.3 * (4 - k) / 3 after step k
    lr = read_csv(out, "Train/Samples/lr")
    assert [v for _, v in lr] == pytest.approx([0.3 * (4 - k) / 3 for k in range(1, 5)])
    assert all(v > 0 for _, v in read_csv(out, "Train/Samples/tokens_per_s"))

    # the first step's gradient norm, before clipping, from plain autograd on the same first batch
    run = setup(load_config(flags(tiny_t5_dir, memorise_dir, tmp_path / "reference")))
    batch = next(iter(run.batches(0)))
    loss = run.model(**batch).loss
    grads = torch.autograd.grad(loss, list(run.prompt.parameters()))
    norm = torch.cat([g.flatten() for g in grads]).norm().item()
    assert loss.item() == pytest.approx(curve[0], rel=1e-6)
    assert read_csv(out, "Train/Samples/grad_norm")[0][1] == pytest.approx(norm, rel=1e-5)


def test_a_resumed_run_continues_its_csv_without_duplicates(tiny_t5_dir, memorise_dir, tmp_path):
    """Killed after step 6 with its last checkpoint at step 3: the rows of steps 4-6 are written again,
    once, from the resumed run, and a logging window of 2 averages its two steps."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    args = ["--max_steps", "6", "--save_steps", "3", "--logging_steps", "2"]
    assert main(["train", *flags(tiny_t5_dir, memorise_dir, straight, *args)]) == 0
    assert main(["train", *flags(tiny_t5_dir, memorise_dir, out, *args)]) == 0
    (out / "report.json").unlink()
    (out / "checkpoints" / "latest").write_text("step-000003")  # as if killed before the final checkpoint
    assert main(["train", *flags(tiny_t5_dir, memorise_dir, out, *args)]) == 0
    curve = report(straight)["train"]["loss_curve"]
    torch.testing.assert_close(report(out)["train"]["loss_curve"], curve)
    text = (out / "logs" / "Train_Samples_loss.csv").read_text()
    assert text.count("step,loss") == 1
    loss = read_csv(out, "Train/Samples/loss")
    assert [x for x, _ in loss] == [4, 8, 12]
    assert [v for _, v in loss] == pytest.approx([sum(curve[i:i + 2]) / 2 for i in (0, 2, 4)], rel=1e-6)
    assert [x for x, _ in read_csv(out, "Train/Samples/lr")] == [2, 4, 6, 8, 10, 12]


def test_tensorboard_events_hold_the_curve(tiny_llama_dir, memorise_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", *flags(tiny_llama_dir, memorise_dir, out, "--max_steps", "3", "--logging_steps", "1",
                                 "--report_to", "tensorboard")]) == 0
    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    loss = events.Scalars("Train/Samples/loss")
    assert [e.step for e in loss] == [2, 4, 6]
    assert [e.value for e in loss] == pytest.approx(report(out)["train"]["loss_curve"], rel=1e-6)
    assert not list((out / "logs").glob("*.csv"))  # csv was not asked for


def test_wandb_offline_run_holds_the_curve(tiny_t5_dir, memorise_dir, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([str(Path(sys.executable).parent / "lrpt"), "train",
                           *flags(tiny_t5_dir, memorise_dir, out, "--max_steps", "3", "--logging_steps", "1",
                                  "--report_to", "wandb")],
                          env={**clean_env(), "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "less than the current step" not in done.stderr  # one monotonic axis for DeepSpeed's events and ours
    (records,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))  # under the run directory
    data = Path(records).read_bytes()
    assert b"Train/Samples/loss" in data and b"Train/Samples/grad_norm" in data
    for value in report(out)["train"]["loss_curve"]:
        assert json.dumps(value).encode() in data


def test_report_to_none_writes_no_logs_and_a_bad_name_is_refused(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *flags(tiny_t5_dir, memorise_dir, out, "--max_steps", "1", "--report_to", "none")]) == 0
    assert not (out / "logs").exists()
    assert main(["train", "--report_to", "csv,mlflow"]) == 2
    assert "--report_to must be none, all, or a comma-separated list of csv, tensorboard, wandb; got 'csv,mlflow'" \
        in capsys.readouterr().err
