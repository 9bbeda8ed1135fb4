"""One name, one vocabulary: lrpt imports as `lrpt` only; train, plan, bench, sweep and Slurm take
RunConfig's names; a method's options come from the method (a plugin method trains from the CLI)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from launch import ROOT, clean_env
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig, load_config
from lrpt.trainer.measure.plan import PlanSpec, plan

BIN = Path(sys.executable).parent


def python_outside(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)


def test_imports_as_lrpt_and_nothing_else_outside_the_checkout(tmp_path):
    done = python_outside(tmp_path, "import lrpt.methods, lrpt.trainer.cli.main, lrpt.eval.tasks; "
                                    "print(lrpt.methods.build('dpt', 4, 8)().shape)")
    assert done.returncode == 0 and "torch.Size([4, 8])" in done.stdout, done.stderr[-2000:]
    for name in ("trainer", "methods", "eval"):
        done = python_outside(tmp_path, f"import {name}")
        assert done.returncode == 1 and f"No module named '{name}'" in done.stderr, (name, done.stderr[-500:])
    done = python_outside(tmp_path, "from importlib.resources import files; print(sorted(p.name for p in "
                                    "files('lrpt.ds_configs').iterdir() if p.suffix == '.json'))")
    assert done.stdout.strip() == str(sorted(p.name for p in (ROOT / "ds_configs").glob("*.json")))


def test_lrpt_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "sweep", "table", "export", "predict", "rank", "bench", "plan"):
        assert f"\n  {command} " in out


def test_aliases_mean_the_runconfig_field():
    old = load_config(["--batch", "3", "--grad_ckpt", "--seq_len", "40", "--target_len", "5", "--method", "lamp",
                       "--lamp_pool", "2", "--zero", "2", "--quant", "4bit", "--double_quant"])
    new = load_config(["--per_device_train_batch_size", "3", "--gradient_checkpointing", "--max_source_length", "40",
                       "--max_target_length", "5", "--method", "lamp", "--pool", "2",
                       "--deepspeed", str(ROOT / "ds_configs" / "zero2.json"), "--load_in_4bit",
                       "--bnb_4bit_use_double_quant"])
    assert old.deepspeed is not None and Path(old.deepspeed).read_text() == Path(new.deepspeed).read_text()
    old.deepspeed = new.deepspeed
    assert old == new


# ---- lrpt plan: the run's own settings ----------------------------------------------------------------

def plan_json(argv: list[str], capsys) -> dict:
    main(["plan", *argv, "--json"])
    return json.loads(capsys.readouterr().out)


def test_plan_config_of_a_finished_run_equals_plan_of_its_flags(tiny_llama_dir, memorise_dir, tmp_path, capsys):
    flags = ["--model", tiny_llama_dir, "--method", "lamp", "--pool", "3", "--rank", "4", "--prompt_length", "10",
             "--per_device_train_batch_size", "2", "--max_source_length", "48", "--max_target_length", "6",
             "--gradient_checkpointing", "--deepspeed", str(ROOT / "ds_configs" / "zero2.json")]
    run = tmp_path / "run"
    assert main(["train", *flags, "--task", "rte", "--data_dir", str(memorise_dir), "--max_steps", "1",
                 "--output_dir", str(run),
                 "--progress", "false", "--shared_prefix", "false"]) == 0
    capsys.readouterr()
    from_config = plan_json(["--config", str(run / "config.yaml"), "--gpus", "2"], capsys)
    from_flags = plan_json([*flags, "--gpus", "2"], capsys)
    for key in ("per_rank", "train_peak", "load_peak", "prompt_tokens", "trainable_params", "world_size"):
        assert from_config[key] == from_flags[key], key
    spec = from_flags["spec"]
    # hand: the run's longest batch (48 source + 6 answer tokens, tiny-llama has no bos), ceil(10/3) = 4 tokens
    assert (spec["batch"], spec["seq_len"], spec["zero"], spec["grad_ckpt"]) == (2, 54, 2, True)
    assert from_flags["prompt_tokens"] == 4 and from_flags["trainable_params"] == 10 * 4 + 4 + 4 * 64
    report = json.loads((run / "report.json").read_text())
    assert report["prompt_output_length"] == from_flags["prompt_tokens"]
    assert report["trainable_params"] == from_flags["trainable_params"]


def test_plan_of_lamp_plans_the_pooled_prompt(capsys):
    flags = ["--model", "t5-11b", "--zero", "3", "--gpus", "8", "--method", "lamp", "--prompt_length", "100",
             "--batch", "4", "--seq_len", "256", "--precision", "bf16"]
    pooled, unpooled = plan_json([*flags, "--pool", "4"], capsys), plan_json(flags, capsys)
    assert pooled["prompt_tokens"] == math.ceil(100 / 4) == 25 and unpooled["prompt_tokens"] == 100
    assert pooled["per_rank"]["activations_saved"] < unpooled["per_rank"]["activations_saved"]
    assert main(["plan", *flags, "--pool", "4"]) == 0
    assert "lamp c=100, pool=4 (25 prompt tokens" in capsys.readouterr().out
    assert main(["plan", "--method", "pt", "--pool", "4"]) == 2
    assert "method 'pt' does not take --pool" in capsys.readouterr().err


def test_plan_spec_from_a_decoder_only_run_counts_the_answer_tokens(tiny_llama_dir, tiny_t5_dir):
    cfg = RunConfig(model=tiny_llama_dir, max_source_length=40, max_target_length=8, per_device_train_batch_size=3)
    assert (PlanSpec.from_run(cfg).seq_len, PlanSpec.from_run(cfg).batch) == (48, 3)
    cfg.model = tiny_t5_dir
    assert (PlanSpec.from_run(cfg).seq_len, PlanSpec.from_run(cfg).target_len) == (40, 8)
    assert plan(PlanSpec.from_run(cfg, gpus=2, nodes=3)).world_size == 6


# ---- Slurm: the variables are the fields -------------------------------------------------------------

def slurm_flags(env: dict[str, str]) -> subprocess.CompletedProcess:
    script = f'source "{ROOT}/slurm/common.sh"; lrpt_flags; printf "%s\\n" "${{LRPT_FLAGS[@]}}"'
    base = {k: v for k, v in clean_env().items() if not k.isupper() or k in ("PATH", "HOME")}
    return subprocess.run(["bash", "-c", script], env={**base, "PYTHON": sys.executable, "LRPT_ROOT": str(ROOT), **env},
                          capture_output=True, text=True)


def test_slurm_variables_are_runconfig_names_with_old_spellings_as_aliases():
    env = {"METHOD": "lopt2", "ACTIVATION": "gelu", "PROMPT_RANK": "3", "RANK": "7", "BATCH_SIZE": "5",
           "MAX_SOURCE_LENGTH": "64", "GRADIENT_ACCUMULATION_STEPS": "2", "REPORT_TO": "none", "LOCAL_RANK": "1"}
    done = slurm_flags(env)
    assert done.returncode == 0, done.stderr
    cfg = load_config(done.stdout.splitlines())
    assert (cfg.method, cfg.activation, cfg.rank, cfg.per_device_train_batch_size) == ("lopt2", "gelu", 3, 5)
    assert (cfg.max_source_length, cfg.gradient_accumulation_steps, cfg.report_to) == (64, 2, "none")
    assert cfg.local_rank == -1  # the launcher's, never a Slurm variable
    done = slurm_flags({"BATCH_SIZE": "5", "PER_DEVICE_TRAIN_BATCH_SIZE": "6"})
    assert done.returncode == 2 and "BATCH_SIZE=5 and PER_DEVICE_TRAIN_BATCH_SIZE=6 disagree" in done.stderr


# ---- a method from another package: one file, one entry point --------------------------------------

TOY = '''
from dataclasses import dataclass

import torch
from torch import nn

from lrpt.methods.base import MethodConfig, PromptModule, option


@dataclass
class ToyConfig(MethodConfig):
    toy_scale: float | None = option(None, "multiplies the prompt (default 1)")

    def validate(self):
        if self.toy_scale is not None and self.toy_scale <= 0:
            raise ValueError("--toy_scale must be > 0")


class Toy(PromptModule):
    name = "toy"
    config_class = ToyConfig

    def __init__(self, num_tokens, embed_dim, toy_scale=1.0, generator=None):
        super().__init__(num_tokens, embed_dim)
        self.toy_scale = toy_scale
        self.raw = nn.Parameter(torch.randn(num_tokens, embed_dim, generator=generator) * 0.1)

    def forward(self):
        return self.raw * self.toy_scale
'''


@pytest.fixture(scope="module")
def toy_plugin(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("toy_site")
    (site / "toy_method.py").write_text(TOY)
    info = site / "lrpt_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lrpt-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lrpt.methods]\ntoy = toy_method:Toy\n")
    return {**clean_env(), "PYTHONPATH": str(site)}


def lrpt(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lrpt"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_a_registered_method_with_its_own_option_trains_from_the_cli(toy_plugin, tiny_t5_dir, memorise_dir, tmp_path):
    run = tmp_path / "toy"
    done = lrpt(["train", "--method", "toy", "--toy_scale", "2.5", "--model", tiny_t5_dir, "--task", "rte",
                 "--data_dir", str(memorise_dir), "--prompt_length", "6", "--max_steps", "3", "--output_dir", str(run),
                 "--progress", "false", "--logging_steps", "1", "--batch", "2"], toy_plugin, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert report["method"] == "toy" and report["config"]["toy_scale"] == 2.5
    assert report["trainable_params"] == 6 * 64 and len(report["train"]["loss_curve"]) == 3
    # the option reached the module: the exported prompt is 2.5 x the trained parameter
    raw, dense = load_file(run / "prompt.safetensors")["raw"], load_file(run / "prompt_dense.safetensors")["prompt"]
    assert (dense - 2.5 * raw).abs().max() < 1e-6 and raw.abs().max() > 0
    # ... and every other command knows it: help, plan, Slurm variables, its own validation
    assert "--toy_scale" in lrpt(["train", "--help"], toy_plugin, tmp_path).stdout
    planned = lrpt(["plan", "--model", "tiny-t5", "--method", "toy", "--toy_scale", "3", "--prompt_length", "6",
                    "--json"], toy_plugin, tmp_path)
    assert planned.returncode == 0 and json.loads(planned.stdout)["trainable_params"] == 6 * 128
    variables = subprocess.run([sys.executable, "-m", "lrpt.trainer.config.slurm_env"], env=toy_plugin,
                               capture_output=True, text=True, check=True).stdout
    assert "TOY_SCALE\ttoy_scale" in variables.splitlines()
    refused = lrpt(["train", "--method", "toy", "--toy_scale", "-1"], toy_plugin, tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip() == "lrpt train: error: --toy_scale must be > 0"
    refused = lrpt(["train", "--method", "pt", "--toy_scale", "2"], toy_plugin, tmp_path)
    assert refused.returncode == 2 and "method 'pt' does not take --toy_scale" in refused.stderr
    assert "--toy_scale" not in lrpt(["train", "--help"], clean_env(), tmp_path).stdout  # without the plugin
