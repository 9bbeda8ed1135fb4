"""Recipes: each paper's setting as a YAML file that loads, validates, plans, and trains under its flags."""
from __future__ import annotations

import json

import pytest
import yaml

from lrpt.trainer.config import recipe
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import load_config
from lrpt.trainer.errors import LrptError

# DPT, arXiv 2310.10094: §4 and its released code (the reference values, written out by hand)
DPT_PAPER = {"prompt_length": 100, "learning_rate": 0.3, "weight_decay": 1e-5, "max_grad_norm": 1.0,
             "warmup_ratio": 0.1, "per_device_train_batch_size": 16, "num_train_epochs": 100.0,
             "max_source_length": 256, "max_target_length": 128, "decoding": "generate", "selection": "paper-val"}
DPT_METHODS = {"dpt": {"rank": 10}, "residual": {"bottleneck": 400}, "pt": {}}


@pytest.mark.parametrize("name", recipe.available())
def test_every_recipe_loads_and_validates_for_each_of_its_methods(name):
    methods = recipe.methods_of(name)
    assert methods
    for method in methods:
        cfg = load_config(["--recipe", name, "--method", method])
        cfg.validate()
        assert cfg.method == method and cfg.recipe == name
    assert load_config(["--recipe", name]).method == yaml.safe_load(open(recipe.path_of(name)))["method"]


# DePT (arXiv 2309.05173) as its released code and Table 1 logs ran WiC, WSC, CB and MultiRC (m = 60, r = 30), and
# ULPT (arXiv 2502.04501) as its README and train.sh run it: the values, written out by hand
DEPT_CODE = {"model": "t5-base", "prompt_length": 60, "rank": 30, "alpha": 8.0, "offset_length": 256,
             "learning_rate": 0.3, "offset_learning_rate": 5e-3, "weight_decay": 0.0, "max_grad_norm": 1.0,
             "per_device_train_batch_size": 32, "max_steps": 30000, "max_source_length": 256, "init": "text",
             "init_text": "Classify this text is postive or not:"}
ULPT_CODE = {"model": "t5-base", "prompt_length": 100, "rank": 2, "learning_rate": 0.6, "weight_decay": 0.0,
             "per_device_train_batch_size": 16, "max_steps": 30000, "max_source_length": 256}


@pytest.mark.parametrize("name, values, params", [("dept-t5-base", DEPT_CODE, 76_800),
                                                   ("ulpt-t5-base", ULPT_CODE, 1_736)])
def test_dept_and_ulpt_recipes_are_their_codes_setting(name, values, params):
    """Each value as the code ran it, and the trainable count the papers give for T5-Base (e = 768): DePT's equal to
    a 100-token prompt's, ULPT's n·r + 2e."""
    cfg = load_config(["--recipe", name])
    assert {k: getattr(cfg, k) for k in values} == values
    assert abs(cfg.warmup_ratio * cfg.max_steps - 500) < 2  # 500 warm-up steps
    from lrpt import methods

    prompt = cfg.build_method(768, True, **methods.random_start(cfg.method))
    assert prompt.num_trainable_params() == params


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_dpt_recipes_are_the_papers_setting(size):
    for method, options in DPT_METHODS.items():
        cfg = load_config(["--recipe", f"dpt-t5-{size}", "--method", method])
        assert cfg.model == f"t5-{size}"  # the original T5 checkpoints, as DPT's code loads
        assert {k: getattr(cfg, k) for k in DPT_PAPER} == DPT_PAPER
        assert {k: getattr(cfg, k) for k in options} == options


def test_flags_override_a_recipe_and_refusals_are_one_line(tmp_path):
    cfg = load_config(["--recipe", "dpt-t5-base", "--learning_rate", "0.1", "--model", "tiny-t5"])
    assert (cfg.learning_rate, cfg.model, cfg.rank) == (0.1, "tiny-t5", 10)
    with pytest.raises(LrptError, match="no recipe 'dpt-t5-xl'; recipes: dept-t5-base, dpt-t5-base"):
        load_config(["--recipe", "dpt-t5-xl"])
    with pytest.raises(LrptError, match="has settings for dpt, residual, pt, not for --method lamp"):
        load_config(["--recipe", "dpt-t5-base", "--method", "lamp"])
    (tmp_path / "x.yaml").write_text("seed: 1\n")
    with pytest.raises(LrptError, match="--recipe and --config both"):
        load_config(["--recipe", "dpt-t5-base", "--config", str(tmp_path / "x.yaml")])


def test_lrpt_plan_takes_a_recipe_offline(capsys):
    assert main(["plan", "--recipe", "dpt-t5-base", "--json"]) in (0, 1)  # 1: planned, does not fit
    plan = json.loads(capsys.readouterr().out)
    spec = plan["spec"]
    assert (spec["model"], spec["method"], spec["options"], spec["batch"], spec["seq_len"], spec["prompt_length"]) \
        == ("t5-base", "dpt", {"rank": 10}, 16, 256, 100)


def test_a_run_from_a_recipe_records_it_and_repeats_from_its_config(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--recipe", "dpt-t5-base", "--model", tiny_t5_dir, "--task", "rte", "--data_dir",
            str(memorise_dir),
            "--output_dir", str(out), "--num_train_epochs", "2", "--per_device_train_batch_size", "2",
            "--decoding", "rank", "--progress", "false"]
    assert main(argv) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["recipe"] == "dpt-t5-base" and saved["rank"] == 10 and saved["selection"] == "paper-val"
    report = json.loads((out / "report.json").read_text())
    assert report["selection"]["protocol"] == "paper-val" and report["train"]["steps"] == 4
    assert [h["step"] for h in report["train"]["eval_history"]] == [2, 4]  # the best epoch, as DPT's code
    capsys.readouterr()
    assert main(["train", "--config", str(out / "config.yaml")]) == 0  # the same run: finished, untouched
    assert "is finished (report.json): nothing to run" in capsys.readouterr().out
