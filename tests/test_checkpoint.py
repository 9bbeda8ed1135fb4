"""Checkpoints hold the prompt only, survive a crash, and resume to the same losses."""
from __future__ import annotations

import json

import pytest
import torch

from lrpt.trainer import checkpoint
from lrpt.trainer.config import RunConfig
from lrpt.trainer.loop import train


class Crash(Exception):
    pass


def config(model_dir, data_dir, out, **kw) -> RunConfig:
    base = dict(model=model_dir, data_dir=str(data_dir), output_dir=str(out), method="lamp", rank=4, pool=2,
                prompt_length=8, per_device_train_batch_size=2, max_steps=8, save_steps=3, warmup_ratio=0.25,
                progress=False, seed=3)
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_crash_then_resume_reproduces_the_loss_curve(arch, backbone_dirs, memorise_dir, tmp_path, monkeypatch):
    model_dir = backbone_dirs[arch]
    straight = train(config(model_dir, memorise_dir, tmp_path / "straight")).report

    real_save, saves = checkpoint.save, []

    def save_then_crash(*args, **kwargs):  # the process dies right after its second checkpoint
        path = real_save(*args, **kwargs)
        saves.append(path)
        if len(saves) == 2:
            raise Crash
        return path

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    with pytest.raises(Crash):
        train(config(model_dir, memorise_dir, tmp_path / "resumed"))
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert checkpoint.latest(tmp_path / "resumed").name == "step-000006"

    resumed = train(config(model_dir, memorise_dir, tmp_path / "resumed")).report
    torch.testing.assert_close(resumed["train"]["loss_curve"], straight["train"]["loss_curve"], rtol=1e-6, atol=1e-6)
    assert resumed["metrics"] == straight["metrics"]


def test_checkpoint_holds_no_frozen_weights(tiny_t5_dir, memorise_dir, tmp_path):
    run = train(config(tiny_t5_dir, memorise_dir, tmp_path / "run", max_steps=3))
    ckpt = checkpoint.latest(tmp_path / "run")
    files = {p.name: p.stat().st_size for p in ckpt.rglob("*") if p.is_file()}
    total = sum(files.values())
    backbone_bytes = sum(p.numel() * p.element_size() for p in run.model.backbone.parameters())
    prompt_bytes = run.report["trainable_params"] * 4
    assert {"prompt.safetensors", "prompt_dense.safetensors", "trainer_state.json"} <= files.keys()
    # factors + 2 Adam moments + dense prompt + DeepSpeed's bookkeeping: kilobytes, never the backbone
    assert total < 4 * prompt_bytes + 64 * 1024, files
    assert total < backbone_bytes / 10
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 3 and len(state["loss_curve"]) == 3


def test_a_finished_run_is_not_trained_again(tiny_t5_dir, memorise_dir, tmp_path):
    first = train(config(tiny_t5_dir, memorise_dir, tmp_path / "run", max_steps=2)).report
    again = train(config(tiny_t5_dir, memorise_dir, tmp_path / "run", max_steps=2)).report
    assert again["train"]["loss_curve"] == first["train"]["loss_curve"]
    assert again["throughput"]["per_rank"][0].get("steps_measured", 0) == 0


def test_checkpoint_size_does_not_grow_with_the_backbone(memorise_dir, tmp_path):
    from lrpt.trainer.presets import save_preset

    sizes, backbones = {}, {}
    for layers in (1, 4):
        model_dir = save_preset("tiny-t5", str(tmp_path / f"t5-{layers}"), width=64, layers=layers)
        run = train(config(model_dir, memorise_dir, tmp_path / f"run-{layers}", max_steps=2))
        ckpt = checkpoint.latest(tmp_path / f"run-{layers}")
        sizes[layers] = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        backbones[layers] = sum(p.numel() for p in run.model.backbone.parameters())
    assert backbones[4] > 2 * backbones[1]
    assert abs(sizes[4] - sizes[1]) < 0.02 * sizes[1], sizes  # only metadata may differ


def test_pruning_orders_by_step_and_keeps_the_checkpoint_just_written(tiny_t5_dir, memorise_dir, tmp_path):
    """A fresh start (--resume_from_checkpoint none) where an older run left step-000100 and step-000200:
    by name the new step-000001.. sort first and would be pruned the moment they are written."""
    out = tmp_path / "run"
    for step in (100, 200):
        (out / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    train(config(tiny_t5_dir, memorise_dir, out, max_steps=4, save_steps=1, save_total_limit=2,
                 resume_from_checkpoint="none"))
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert kept == ["step-000004", "step-000200"]  # the newest by number, and the one just written
    assert checkpoint.latest(out).name == "step-000004"
    assert checkpoint.step_of(out / "checkpoints" / "step-1000000") > checkpoint.step_of(out / "step-999999")


def test_latest_naming_a_missing_checkpoint_is_refused_before_loading(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    from lrpt.trainer.cli import main

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-000006")
    argv = ["train", "--model", tiny_t5_dir, "--data_dir", str(memorise_dir), "--output_dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoints/latest names step-000006, which does not exist" in err and err.count("\n") == 1
    assert "Loading weights" not in err and not (out / "config.yaml").exists()  # refused before anything loads
