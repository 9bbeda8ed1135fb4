"""RunConfig: YAML + flags, transformers-style names, and refusals before any weight loads."""
from __future__ import annotations

import json

import pytest

from lrpt.trainer.config.run_config import RunConfig, load_config
from lrpt.trainer.config.ds_config import resolve_ds_config
from lrpt.trainer.errors import LrptError


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: lamp\nrank: 4\nlearning_rate: 0.1\ngradient_checkpointing: true\n")
    cfg = load_config(["--config", str(path), "--learning-rate", "0.5", "--pool", "2", "--max_steps", "7"])
    assert (cfg.method, cfg.rank, cfg.pool, cfg.max_steps) == ("lamp", 4, 2, 7)
    assert cfg.learning_rate == 0.5 and cfg.gradient_checkpointing is True


def test_flags_types_and_spellings():
    cfg = load_config(["--per-device-train-batch-size", "3", "--gradient_checkpointing", "--progress", "false",
                       "--rank", "none", "--local_rank=1"])
    assert cfg.per_device_train_batch_size == 3 and cfg.gradient_checkpointing and cfg.progress is False
    assert cfg.rank is None and cfg.local_rank == 1
    assert load_config([]) == RunConfig()


def test_yaml_unknown_key_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("methd: dpt\n")
    with pytest.raises(LrptError, match=r"unknown keys \['methd'\]"):
        load_config(["--config", str(path)])


def test_config_roundtrip_through_yaml(tmp_path):
    import yaml
    cfg = RunConfig(method="residual", bottleneck=16, output_dir="x")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(["--config", str(path)]) == cfg


def test_ds_config_auto_fields(tmp_path):
    cfg = RunConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_grad_norm=0.5,
                    deepspeed="ds_configs/zero3.json")
    ds = resolve_ds_config(cfg, world_size=2).json
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 16 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["zero_optimization"]["stage"] == 3
    assert "auto" not in json.dumps(ds)


def test_ds_config_global_batch_must_split_evenly(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 30, "train_micro_batch_size_per_gpu": "auto"}))
    with pytest.raises(LrptError, match="micro batch must divide the global batch"):
        resolve_ds_config(RunConfig(per_device_train_batch_size=4, deepspeed=str(path)), world_size=2)


def test_ds_config_refuses_its_own_optimizer(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(LrptError, match="remove 'optimizer'"):
        resolve_ds_config(RunConfig(deepspeed=str(path)), world_size=1)


def test_yaml_values_take_their_field_types_as_the_same_flags_would(tmp_path):
    """PyYAML reads `3e-1` as a string and `"false"` is a string: each is read as the flag would be."""
    path = tmp_path / "run.yaml"
    path.write_text('load_in_8bit: "false"\nlearning_rate: 3e-1\nper_device_train_batch_size: "4"\nrank: null\n'
                    'gradient_checkpointing: "on"\nshared_prefix: false\n')
    cfg = load_config(["--config", str(path)])
    flags = load_config(["--load_in_8bit", "false", "--learning_rate", "3e-1", "--per_device_train_batch_size", "4",
                         "--rank", "none", "--gradient_checkpointing", "on", "--shared_prefix", "false"])
    assert cfg == flags
    assert (cfg.load_in_8bit, cfg.learning_rate, cfg.per_device_train_batch_size) == (False, 0.3, 4)
    assert type(cfg.learning_rate) is float and type(cfg.per_device_train_batch_size) is int


@pytest.mark.parametrize("line, message", [
    ("max_steps: 2.5", "max_steps must be an integer, got 2.5"),
    ("gradient_checkpointing: 1", "gradient_checkpointing must be true or false, got 1"),
    ("seed: yes", "seed must be an integer, got True"),
    ("learning_rate: fast", "learning_rate must be a number, got 'fast'"),
    ("task: 5", "task must be a string, got 5"),
    ("model: null", "model must be a string, got None"),
])
def test_yaml_values_of_the_wrong_type_are_refused_by_name(tmp_path, line, message):
    path = tmp_path / "run.yaml"
    path.write_text(line + "\n")
    with pytest.raises(LrptError, match=f"config file '{path}': {message}$"):
        load_config(["--config", str(path)])
