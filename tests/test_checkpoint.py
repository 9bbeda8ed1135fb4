"""Checkpoints hold the prompt only, survive a crash, and resume to the same losses."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lrpt.trainer.rundir import checkpoint, files as run_files
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.train.loop import train


class Crash(Exception):
    pass


def config(model_dir, data_dir, out, **kw) -> RunConfig:
    base = dict(model=model_dir, task="rte", data_dir=str(data_dir), output_dir=str(out), method="lamp", rank=4, pool=2,
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
    torch.testing.assert_close(resumed.train.loss_curve, straight.train.loss_curve, rtol=1e-6, atol=1e-6)
    assert resumed.metrics == straight.metrics


def tensors_in(value, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a loaded checkpoint file, by its path of keys."""
    if isinstance(value, torch.Tensor):
        return {path: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return {k: t for key, v in items for k, t in tensors_in(v, f"{path}/{key}").items()}


def test_checkpoint_holds_the_prompt_and_its_optimizer_state_only(tiny_t5_dir, memorise_dir, tmp_path):
    """What the files contain, tensor by tensor: the prompt's trainable parameters (equal to the checkpoint's
    own prompt.safetensors) and AdamW's step, exp_avg and exp_avg_sq for each of them; nothing else."""
    from lrpt.trainer.rundir.weights_only import load

    run = train(config(tiny_t5_dir, memorise_dir, tmp_path / "run", max_steps=3))
    ckpt = checkpoint.latest(tmp_path / "run")
    assert sorted(p.name for p in ckpt.iterdir()) == ["mp_rank_00_model_states.pt", "prompt.safetensors",
                                                     "prompt_dense.safetensors", "trainer_state.json"]
    params = {n: p for n, p in run.model.prompt.named_parameters()}  # LAMP: u, q, v
    assert sorted(params) == ["q", "u", "v"]
    found = tensors_in(load(ckpt / "mp_rank_00_model_states.pt", "cpu"))
    wanted = {f"/module/prompt.{n}": p.shape for n, p in params.items()}
    for i, p in enumerate(params.values()):
        wanted.update({f"/optimizer/state/{i}/step": (), f"/optimizer/state/{i}/exp_avg": p.shape,
                       f"/optimizer/state/{i}/exp_avg_sq": p.shape})
    assert {k: tuple(t.shape) for k, t in found.items()} == {k: tuple(v) for k, v in wanted.items()}
    saved = load_file(ckpt / "prompt.safetensors")
    for name in params:
        torch.testing.assert_close(found[f"/module/prompt.{name}"], saved[name], rtol=0, atol=0)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 3 and len(state["loss_curve"]) == 3


def test_latest_names_only_a_checkpoint_in_place(tiny_t5_dir, memorise_dir, tmp_path, monkeypatch):
    """A save that dies while moving its staged directory into place leaves `latest` on the previous
    checkpoint, which is whole; a run resumed from it ends on the uninterrupted run's curve."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    reference = train(config(tiny_t5_dir, memorise_dir, straight)).report
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if str(src).endswith("step-000006"):  # the second checkpoint's move into place
            raise Crash
        calls.append(str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(Crash):
        train(config(tiny_t5_dir, memorise_dir, out))
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert checkpoint.latest(out).name == "step-000003" and not (out / "checkpoints" / "step-000006").exists()
    assert (checkpoint.latest(out) / "mp_rank_00_model_states.pt").is_file()
    resumed = train(config(tiny_t5_dir, memorise_dir, out)).report
    torch.testing.assert_close(resumed.train.loss_curve, reference.train.loss_curve, rtol=1e-6, atol=1e-6)


def test_a_finished_run_is_not_trained_again(tiny_t5_dir, memorise_dir, tmp_path):
    first = train(config(tiny_t5_dir, memorise_dir, tmp_path / "run", max_steps=2)).report
    again = train(config(tiny_t5_dir, memorise_dir, tmp_path / "run", max_steps=2))
    assert again.report == first and again.model is None  # the measured figures stand; nothing was loaded


def test_checkpoint_size_does_not_grow_with_the_backbone(memorise_dir, tmp_path):
    from lrpt.trainer.backbone.presets import save_preset

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
    """By name step-1000000 sorts before step-999999 and would be the one pruned; and the checkpoint just
    written stays even when higher steps are there (an explicit --resume_from_checkpoint of an earlier one)."""
    root = tmp_path / "checkpoints"
    for step in (5, 999_999, 1_000_000):
        (root / f"step-{step:06d}").mkdir(parents=True)
        (root / f"step-{step:06d}" / "trainer_state.json").write_text("{}")
        run_files.record(tmp_path, [f"checkpoints/step-{step:06d}/trainer_state.json"])
    checkpoint._prune(tmp_path, keep=1, written=root / "step-000005")
    assert sorted(p.name for p in root.iterdir()) == ["step-000005", "step-1000000"]
    out = tmp_path / "run"
    train(config(tiny_t5_dir, memorise_dir, out, max_steps=4, save_steps=1, save_total_limit=2))
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000003", "step-000004"]
    assert checkpoint.latest(out).name == "step-000004"


def test_latest_naming_a_missing_checkpoint_is_refused_before_loading(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    from lrpt.trainer.cli.main import main

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-000006")
    run_files.record(out, ["checkpoints/latest"])  # as lrpt writes it
    argv = ["train", "--model", tiny_t5_dir, "--task", "rte", "--data_dir", str(memorise_dir), "--output_dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "checkpoints/latest names step-000006, which does not exist" in err and err.count("\n") == 1
    assert "Loading weights" not in err and not (out / "config.yaml").exists()  # refused before anything loads


class Payload:
    """What a crafted checkpoint holds: unpickling it runs code (here: writes `marker`)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def stopped_run(tiny_t5_dir, memorise_dir, tmp_path_factory) -> Path:
    """A run whose last checkpoint stands but whose report is gone: the next launch resumes from it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train(config(tiny_t5_dir, memorise_dir, out, max_steps=2, save_steps=1))
    (out / "report.json").unlink()
    return out


@pytest.mark.parametrize("damage", ["pickle payload", "truncated"])
def test_resume_unpickles_no_code_and_names_a_broken_file(damage, stopped_run, tmp_path, capsys):
    from lrpt.trainer.cli.main import main

    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    target = checkpoint.latest(out) / "mp_rank_00_model_states.pt"
    marker = tmp_path / "marker"
    if damage == "pickle payload":
        torch.save({"module": Payload(marker)}, target)
    else:
        target.write_bytes(target.read_bytes()[:200])
    assert main(["train", "--config", str(out / "config.yaml"), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{target}: " in err and err.count("\n") == 1, err  # one line, before any weight loads
    assert ("exec, which no checkpoint" if damage == "pickle payload" else "cannot read this checkpoint") in err
    assert not marker.exists() and not (out / "report.json").exists()
    if damage == "pickle payload":  # the planted file does run code when unpickled as DeepSpeed does
        torch.load(target, weights_only=False)
        assert marker.read_text() == "ran"


def test_an_explicit_checkpoint_is_resumed_from_when_latest_is_gone(tiny_t5_dir, memorise_dir, tmp_path,
                                                                     monkeypatch, capsys):
    """--resume_from_checkpoint PATH resumes from PATH: here `latest` names a checkpoint that was deleted (auto
    is refused), and the run resumed from step 3 ends on the uninterrupted run's curve."""
    from lrpt.trainer.cli.main import main

    straight = train(config(tiny_t5_dir, memorise_dir, tmp_path / "straight")).report
    out = tmp_path / "run"
    real_save, saves = checkpoint.save, []

    def save_then_crash(*args, **kwargs):
        saves.append(real_save(*args, **kwargs))
        if len(saves) == 2:
            raise Crash
        return saves[-1]

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    with pytest.raises(Crash):
        train(config(tiny_t5_dir, memorise_dir, out))
    monkeypatch.setattr(checkpoint, "save", real_save)
    shutil.rmtree(out / "checkpoints" / "step-000006")
    relaunch = ["train", "--config", str(out / "config.yaml")]
    assert main(relaunch) == 2 and "names step-000006, which does not exist" in capsys.readouterr().err
    assert main([*relaunch, "--resume_from_checkpoint", str(out / "checkpoints" / "step-000003")]) == 0
    assert f"resumed from {out}/checkpoints/step-000003 at step 3" in capsys.readouterr().out
    resumed = json.loads((out / "report.json").read_text())
    torch.testing.assert_close(resumed["train"]["loss_curve"], straight.train.loss_curve, rtol=1e-6, atol=1e-6)
