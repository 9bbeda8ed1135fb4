"""Fused runs (`lrpt sweep --fuse`, trainer/train/fused.py) against the same runs trained one after another.

The reference for every fused run is its run trained alone by `lrpt sweep` without --fuse (its own
engine, its own forward of the backbone), never the fused code: loss curves to fp32 rtol 1e-5, the final
prompt's factors (to 1e-4 of their norm: a fused batch is padded to its longest row, and the other matmul
shapes round differently, which AdamW's normalised steps grow), the metrics, the checkpoint's files.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launch import ROOT, clean_env, run_group
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.runtime.distributed import free_port
from lrpt.trainer.errors import LrptError
from lrpt.trainer.train.fused import check_group
from lrpt.trainer.train.loop import train, train_group

SWEEP = ["--tasks", "rte", "--methods", "pt,dpt", "--seeds", "0,1"]
RUNS = [f"rte-{m}-seed{s}" for m in ("pt", "dpt") for s in (0, 1)]


def run_flags(model_dir: str, data_dir, *extra: str) -> list[str]:
    return ["--model", model_dir, "--task", "rte", "--data_dir", str(data_dir), "--prompt_length", "4", "--max_steps",
            "6",
            "--per_device_train_batch_size", "2", "--warmup_ratio", "0.25", "--decoding", "rank", "--progress",
            "false", *extra]


def assert_same_run(fused: Path, alone: Path, others: list[str]) -> None:
    """A fused run's directory against its run trained alone: path, curve, prompt, metrics, checkpoint files."""
    got, want = (json.loads((d / "report.json").read_text()) for d in (fused, alone))
    assert got["shared_prefix"] == want["shared_prefix"]
    torch.testing.assert_close(got["train"]["loss_curve"], want["train"]["loss_curve"], rtol=1e-5, atol=1e-7)
    assert len(got["train"]["loss_curve"]) == want["train"]["steps"]
    assert got["metrics"] == want["metrics"]
    assert got["fused"] == {"with": others, "runs": len(others) + 1} and "fused" not in want
    prompt, reference = load_file(fused / "prompt.safetensors"), load_file(alone / "prompt.safetensors")
    assert prompt.keys() == reference.keys()
    for name in prompt:  # the padded batch's other shapes round differently; AdamW's normalised steps grow that
        difference = float((prompt[name] - reference[name]).norm() / reference[name].norm())  # (measured ≤ 1.3e-5)
        assert difference <= 1e-4, (name, difference)
    last = (alone / "checkpoints" / "latest").read_text()
    assert (fused / "checkpoints" / "latest").read_text() == last
    assert sorted(os.listdir(fused / "checkpoints" / last)) == sorted(os.listdir(alone / "checkpoints" / last))


@pytest.mark.parametrize("arch, path", [("t5", []), ("llama", []), ("llama", ["--shared_prefix", "false"])],
                         ids=["t5", "llama-shared-prefix", "llama-standard"])
def test_fused_sweep_equals_the_runs_trained_alone(arch, path, backbone_dirs, memorise_dir, tmp_path, capsys):
    """Each path against itself: a LLaMA run alone takes the shared prefix by default and its fused runs pack a
    segment each into one sequence; with --shared_prefix false both take the standard path. (The two paths agree
    to float rounding only, which AdamW's normalised steps grow in the prompt.)"""
    flags = run_flags(backbone_dirs[arch], memorise_dir, *path)
    assert main(["sweep", *SWEEP, "--output_dir", str(tmp_path / "alone"), *flags]) == 0
    assert main(["sweep", *SWEEP, "--output_dir", str(tmp_path / "fused"), "--fuse", *flags]) == 0
    shared = arch == "llama" and not path
    assert ("fused: 4 runs in one pass over " + backbone_dirs[arch] + (" (the shared prefix" if shared else
            " (the standard path")) in capsys.readouterr().out
    assert json.loads((tmp_path / "fused" / RUNS[0] / "report.json").read_text())["shared_prefix"] == shared
    for name in RUNS:
        assert_same_run(tmp_path / "fused" / name, tmp_path / "alone" / name, [n for n in RUNS if n != name])
    assert (tmp_path / "fused" / "table.md").read_text() == (tmp_path / "alone" / "table.md").read_text()


def test_fuse_max_splits_a_task_into_groups(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    flags = run_flags(tiny_t5_dir, memorise_dir, "--max_steps", "2")
    assert main(["sweep", *SWEEP, "--output_dir", str(tmp_path), "--fuse", "--fuse_max", "3", *flags]) == 0
    out = capsys.readouterr().out
    assert "group 1/2, fused: " + ", ".join(RUNS[:3]) in out and "group 2/2, fused: " + RUNS[3] in out
    assert json.loads((tmp_path / RUNS[3] / "report.json").read_text())["fused"] == {"with": [], "runs": 1}


def test_fuse_group_trains_that_group_alone_and_writes_no_table(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    """What one Slurm element of FUSE=1 runs: only the group named, every run of the sweep still validated."""
    flags = run_flags(tiny_t5_dir, memorise_dir, "--max_steps", "2")
    argv = ["sweep", *SWEEP, "--output_dir", str(tmp_path), "--fuse", "--fuse_max", "3", *flags]
    assert main([*argv, "--fuse_group", "1"]) == 0
    assert "group 2/2, fused: " + RUNS[3] in capsys.readouterr().out
    assert sorted(p.parent.name for p in tmp_path.glob("*/report.json")) == [RUNS[3]]
    assert not (tmp_path / "table.md").exists()
    assert main([*argv, "--fuse_group", "2"]) == 2
    assert "--fuse_group 2: this sweep has 2 fused groups (0-1)" in capsys.readouterr().err
    assert main(["sweep", *SWEEP, "--output_dir", str(tmp_path), "--fuse_group", "0", *flags]) == 2
    assert "--fuse_group G needs --fuse" in capsys.readouterr().err


@pytest.mark.parametrize("shared_prefix", ["auto", "false"], ids=["shared-prefix", "standard"])
def test_pooled_and_longer_prompts_fused_with_an_unpooled_one(shared_prefix, tiny_llama_dir, memorise_dir, tmp_path,
                                                              monkeypatch):
    """LAMP pooling 7 tokens to 4 next to DPT with 6 and PT with 3: segments with prompts of three lengths in one
    packed sequence (shared prefix: every fused step one forward of three segments), or rows of three widths in one
    batch (standard path)."""
    from lrpt.trainer.model import shared_prefix as packing

    packed, forward = [], packing.packed_logits
    monkeypatch.setattr(packing, "packed_logits", lambda model, segments: packed.append(len(segments)) or forward(
        model, segments))
    base = dict(model=tiny_llama_dir, task="rte", data_dir=str(memorise_dir), per_device_train_batch_size=2,
                max_steps=5,
                learning_rate=0.05,  # AdamW moves a near-zero gradient entry by ~lr·(its rounding)/eps
                warmup_ratio=0.25, decoding="rank", progress=False, seed=4, shared_prefix=shared_prefix)
    runs = {"lamp": dict(method="lamp", prompt_length=7, pool=2, rank=2), "dpt": dict(method="dpt", prompt_length=6),
            "pt": dict(method="pt", prompt_length=3, learning_rate=0.02, max_grad_norm=0.05, seed=9)}

    def cfgs(root: Path) -> list[RunConfig]:
        return [RunConfig(**{**base, **kw, "output_dir": str(root / name)}) for name, kw in runs.items()]

    for cfg in cfgs(tmp_path / "alone"):
        train(cfg)
    alone = len(packed)
    train_group(cfgs(tmp_path / "fused"))
    assert packed[alone:].count(3) == (5 if shared_prefix == "auto" else 0)  # the 5 steps; evaluation: one run each
    for name in runs:
        assert_same_run(tmp_path / "fused" / name, tmp_path / "alone" / name, [n for n in runs if n != name])


@pytest.mark.parametrize("quant", [["--load_in_8bit"], ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4"]],
                         ids=["8bit", "4bit-nf4"])
def test_fused_runs_on_a_quantized_backbone_equal_the_runs_alone(quant, tiny_llama_dir, memorise_dir, tmp_path):
    """On the shared prefix (a LLaMA's default), with gradient checkpointing: the packed sequence through
    bitsandbytes' layers, recomputed in the backward."""
    flags = run_flags(tiny_llama_dir, memorise_dir, "--max_steps", "4", "--gradient_checkpointing", "true", *quant)
    sweep = ["--tasks", "rte", "--methods", "pt,dpt", "--seeds", "0"]
    assert main(["sweep", *sweep, "--output_dir", str(tmp_path / "alone"), *flags]) == 0
    assert main(["sweep", *sweep, "--output_dir", str(tmp_path / "fused"), "--fuse", *flags]) == 0
    names = ["rte-pt-seed0", "rte-dpt-seed0"]
    for name in names:
        assert_same_run(tmp_path / "fused" / name, tmp_path / "alone" / name, [n for n in names if n != name])


def test_every_setting_but_the_per_run_ones_is_shared():
    """Every field is either per run or shared, and what is shared is what a fused forward depends on."""
    import dataclasses

    from lrpt.trainer.train.fused import PER_RUN, SHARED

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert PER_RUN | set(SHARED) == fields and not PER_RUN & set(SHARED)
    assert {"model", "precision", "deepspeed", "load_in_4bit", "max_source_length"} <= set(SHARED)
    assert not {"rank", "pool", "seed", "learning_rate"} & set(SHARED)  # method options and each run's own


REFUSALS = [
    ({"model": "tiny-llama"}, "--model"),
    ({"precision": "bf16"}, "--precision"),
    ({"load_in_8bit": True}, "--load_in_8bit"),
    ({"task": "cb"}, "--task"),
    ({"max_source_length": 64}, "--max_source_length"),
    ({"max_target_length": 4}, "--max_target_length"),
    ({"gradient_accumulation_steps": 2}, "--gradient_accumulation_steps"),
    ({"shared_prefix": "false"}, "--shared_prefix"),
]


@pytest.mark.parametrize("differs, named", REFUSALS, ids=[n for _, n in REFUSALS])
def test_runs_that_cannot_share_a_pass_are_refused_naming_what_differs(differs, named, tmp_path):
    first = RunConfig(model="tiny-t5", output_dir=str(tmp_path / "a"))
    second = RunConfig(**{"model": "tiny-t5", "output_dir": str(tmp_path / "b"), **differs})
    with pytest.raises(LrptError, match=named):
        check_group([first, second])
    assert not (tmp_path / "a").exists()  # refused before any directory was claimed


def test_a_backbone_with_dropout_is_refused(tmp_path):
    from transformers import T5Config

    from lrpt.trainer.backbone.presets import save_preset

    path = save_preset("tiny-t5", str(tmp_path / "t5"), width=32)
    config = T5Config.from_pretrained(path)
    config.dropout_rate = 0.1
    config.save_pretrained(path)
    with pytest.raises(LrptError, match="dropout_rate=0.1"):
        check_group([RunConfig(model=path, output_dir=str(tmp_path / "a"))])


def gpt2_dir(directory: Path, **dropout: float) -> str:
    """A tiny GPT-2 (the tiny LLaMA's tokenizer) with every dropout 0 unless given."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from lrpt.trainer.backbone.presets import save_preset

    tokenizer = AutoTokenizer.from_pretrained(save_preset("tiny-llama", str(directory / "llama")))
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        **{"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0,
                           **dropout})
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory / "gpt2")
    tokenizer.save_pretrained(directory / "gpt2")
    return str(directory / "gpt2")


def config_dir(directory: Path, config) -> str:
    """A backbone as far as a refusal reads it: its config alone (the refusal comes before any weight)."""
    config.save_pretrained(directory)
    return str(directory)


def test_dropout_is_found_by_asking_the_model(tmp_path):
    """The model decides, not the config's key names: GPT-2's residual dropout (nn.Dropout layers), a BERT
    decoder's attention dropout (attention_probs_dropout_prob) and LLaMA's (a probability its attention applies
    itself) are refused; T5's classifier_dropout, which no layer of T5ForConditionalGeneration uses, is not."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64)
    refused = {"resid_pdrop=0.1": GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, bos_token_id=0,
                                             eos_token_id=0, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.1,
                                             summary_first_dropout=0.0),
               "attention_probs_dropout_prob=0.1": BertConfig(is_decoder=True, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.1, **tiny),
               "attention_dropout=0.1": LlamaConfig(attention_dropout=0.1, **tiny)}
    for named, config in refused.items():
        path = config_dir(tmp_path / named, config)
        with pytest.raises(LrptError, match=f"trains with dropout \\({named}; "):
            check_group([RunConfig(model=path, output_dir=str(tmp_path / "a"))])
    unused = T5Config(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, vocab_size=64, dropout_rate=0.0,
                      classifier_dropout=0.1)
    check_group([RunConfig(model=config_dir(tmp_path / "t5", unused), output_dir=str(tmp_path / "b"))])


def test_a_backbone_without_dropout_fuses_and_one_with_dropout_is_refused(memorise_dir, tmp_path, capsys):
    """GPT-2 with resid_pdrop 0.1 is refused by `lrpt sweep --fuse` before anything is written; the same backbone
    with every dropout 0 fuses, and each fused run equals its run alone."""
    with_dropout = gpt2_dir(tmp_path / "dropout", resid_pdrop=0.1)
    flags = run_flags(with_dropout, memorise_dir, "--max_steps", "3")
    assert main(["sweep", *SWEEP, "--output_dir", str(tmp_path / "refused"), "--fuse", *flags]) == 2
    assert "trains with dropout (resid_pdrop=0.1; " in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    flags = run_flags(gpt2_dir(tmp_path / "plain"), memorise_dir, "--max_steps", "3")
    assert main(["sweep", *SWEEP, "--output_dir", str(tmp_path / "alone"), *flags]) == 0
    assert main(["sweep", *SWEEP, "--output_dir", str(tmp_path / "fused"), "--fuse", *flags]) == 0
    assert "group 1/1, fused: " + ", ".join(RUNS) in capsys.readouterr().out
    for name in RUNS:
        assert_same_run(tmp_path / "fused" / name, tmp_path / "alone" / name, [n for n in RUNS if n != name])


def test_fuse_max_without_fuse_is_refused(tmp_path):
    with pytest.raises(LrptError, match="--fuse_max N needs --fuse"):
        from lrpt.trainer.cli.sweep import main as sweep_main

        sweep_main([*SWEEP, "--output_dir", str(tmp_path), "--fuse_max", "2"])


def sweep_command(ranks: int, argv: list[str]) -> list[str]:
    """`deepspeed --num_gpus N trainer/run.py sweep ...`: the sweep on every rank."""
    exe = str(Path(sys.executable).parent / "deepspeed")
    return [exe, "--num_gpus", str(ranks), "--master_port", str(free_port()), str(ROOT / "trainer" / "run.py"),
            "sweep", *argv]


@pytest.mark.parametrize("zero, quant", [("zero3", []), ("zero3", ["--load_in_8bit"]), ("zero2", []), ("zero0", [])],
                         ids=["zero3", "zero3-8bit", "zero2", "zero0"])
def test_fused_sweep_under_the_launcher_equals_the_runs_trained_alone(zero, quant, tiny_t5_dir, memorise_dir,
                                                                       tmp_path):
    """2 ranks through the launcher. ZeRO-3: the backbone sharded (8-bit: loaded sharded, lrpt's ZeRO-3 int8
    layers) and gathered once per step for all runs. ZeRO-2: each run's prompt gradients and AdamW state
    partitioned over the ranks by its own engine, the backbone replicated. ZeRO-0: data parallel, each run's
    prompt gradient averaged over the ranks by its own engine."""
    flags = run_flags(tiny_t5_dir, memorise_dir, "--deepspeed", str(ROOT / "ds_configs" / f"{zero}.json"), *quant)
    for out, fuse in ((tmp_path / "alone", []), (tmp_path / "fused", ["--fuse"])):
        done = run_group(sweep_command(2, [*SWEEP, "--output_dir", str(out), *fuse, *flags]), 600, cwd=ROOT,
                         env=clean_env())
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for name in RUNS:
        assert_same_run(tmp_path / "fused" / name, tmp_path / "alone" / name, [n for n in RUNS if n != name])


@pytest.mark.parametrize("extra", [[], ["--load_in_8bit", "--gradient_checkpointing", "true"]],
                         ids=["zero3", "zero3-8bit-checkpointing"])
def test_fused_shared_prefix_under_zero3_equals_the_runs_alone(extra, tiny_llama_dir, memorise_dir, tmp_path):
    """2 ranks, the LLaMA sharded (8-bit: loaded sharded), gathered once per step for the group's one packed
    sequence, whose segments carry prompts of two lengths (a grid over prompt_length)."""
    sweep = ["--tasks", "rte", "--methods", "pt,dpt", "--seeds", "0", "--grid", "prompt_length=3,5"]
    flags = [*run_flags(tiny_llama_dir, memorise_dir, "--deepspeed", str(ROOT / "ds_configs" / "zero3.json"),
                        "--max_steps", "4", *extra)]
    flags[flags.index("--prompt_length"):flags.index("--prompt_length") + 2] = []
    for out, fuse in ((tmp_path / "alone", []), (tmp_path / "fused", ["--fuse"])):
        done = run_group(sweep_command(2, [*sweep, "--output_dir", str(out), *fuse, *flags]), 600, cwd=ROOT,
                         env=clean_env())
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    names = [f"rte-{m}-seed0-prompt_length{c}" for m in ("pt", "dpt") for c in (3, 5)]
    for name in names:
        assert json.loads((tmp_path / "fused" / name / "report.json").read_text())["shared_prefix"]
        assert_same_run(tmp_path / "fused" / name, tmp_path / "alone" / name, [n for n in names if n != name])


def test_a_fused_sweep_killed_mid_run_resumes_every_run_on_its_own_curve(tiny_llama_dir, memorise_dir, tmp_path):
    """kill -9 of the whole job once every run has a checkpoint and none has finished; relaunched, each run
    ends on the curve of its run trained alone."""
    # a gentle learning rate: at 0.3 these 4 memorised rows make the curve chaotic, and any rounding grows
    flags = run_flags(tiny_llama_dir, memorise_dir, "--max_steps", "16", "--save_steps", "4", "--learning_rate",
                      "0.02")
    assert main(["sweep", *SWEEP, "--output_dir", str(tmp_path / "alone"), *flags]) == 0
    argv = [*SWEEP, "--output_dir", str(tmp_path / "fused"), "--fuse", *flags]
    job = subprocess.Popen([sys.executable, "-m", "lrpt.trainer.cli.main", "sweep", *argv], cwd=ROOT, env=clean_env(),
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = [tmp_path / "fused" / name / "checkpoints" / "latest" for name in RUNS]
    deadline = time.monotonic() + 300
    while not all(p.is_file() for p in latest) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, job.stderr.read().decode()[-3000:]
    steps = [int(p.read_text().split("-")[-1]) for p in latest]
    assert all(0 < s < 16 for s in steps) and not any((p.parents[1] / "report.json").exists() for p in latest)

    assert main(["sweep", *argv]) == 0
    for name in RUNS:
        assert_same_run(tmp_path / "fused" / name, tmp_path / "alone" / name, [n for n in RUNS if n != name])
