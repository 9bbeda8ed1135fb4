"""Open a finished run directory again: its config, its backbone, its trained prompt."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ... import methods
from ..backbone.load import Backbone, load_run_backbone
from ..config.run_config import RunConfig, read_yaml
from ..errors import LrptError
from ..model.prompted import PromptedModel
from .loop import use_shared_prefix


def run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise LrptError(f"{run_dir} is not an lrpt run directory (no config.yaml)")
    return RunConfig(**read_yaml(str(path)))


def prompt_file(run_dir: str | Path, name: str = "prompt.safetensors") -> Path:
    path = Path(run_dir) / name
    if not path.is_file():
        raise LrptError(f"{path} does not exist: the run has not finished (its checkpoints are under checkpoints/)")
    return path


def dense_prompt(run_dir: str | Path) -> torch.Tensor:
    """The trained prompt P (c' x e), whatever the method."""
    return load_file(prompt_file(run_dir, "prompt_dense.safetensors"))["prompt"]


def trained_prompt(cfg: RunConfig, state: dict, backbone: Backbone) -> methods.PromptModule:
    """The run's prompt module holding its trained values: the shapes come from the config, the values from
    the file, so a random start is enough."""
    prompt = cfg.build_method(backbone.embed_dim, backbone.is_encoder_decoder, **methods.random_start(cfg.method))
    prompt.load_state_dict(state)
    return prompt


def load_run(run_dir: str | Path, shared_prefix: bool = False) -> tuple[RunConfig, Backbone, PromptedModel]:
    """The run's backbone (its model, precision and quantization) with its trained prompt in front, in eval mode.
    `shared_prefix`: where the run's --shared_prefix takes it (for scoring and generating, which it does as the
    standard path; its forward returns no full logits)."""
    cfg = run_config(run_dir)
    state = load_file(prompt_file(run_dir))
    backbone = load_run_backbone(cfg)
    prompt = trained_prompt(cfg, state, backbone)
    model = PromptedModel(backbone.model, prompt, backbone.is_encoder_decoder,
                          shared_prefix=shared_prefix and use_shared_prefix(cfg, backbone))
    return cfg, backbone, model.eval()
