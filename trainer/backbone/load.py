"""Load a frozen backbone (preset, hub name, local path or GGUF file) and its tokenizer."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import LrptError
from .presets import BUILT, build_preset
from .quant import bnb_config, prepare_loaded
from .quant_load import load_sharded
from .source import local_model, resolve_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FOUR_BIT_FIELDS = ("bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant",
                   "bnb_4bit_quant_storage")


def backbone_settings(cfg) -> dict:
    """The RunConfig fields that make the backbone a run computes with (the 4-bit ones where it is 4-bit): runs
    that share one backbone agree on every one of them."""
    fields = ("model", "precision", "load_in_8bit", "load_in_4bit", *(FOUR_BIT_FIELDS if cfg.load_in_4bit else ()))
    return {name: getattr(cfg, name) for name in fields}


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_encoder_decoder: bool

    @property
    def embed_dim(self) -> int:
        return self.model.get_input_embeddings().embedding_dim


def load_run_backbone(cfg, sharded: dict | None = None) -> Backbone:
    """The backbone a run computes with, as its config says (`backbone_settings`, and its gradient checkpointing):
    training, evaluation, predict, export and the benchmarks all load it here, so a prompt is never scored on a
    backbone other than the one it was trained on. `sharded`: the DeepSpeed config, when the quantized weights
    load sharded under ZeRO-3."""
    return load_backbone(cfg.model, cfg.precision, cfg.gradient_checkpointing, bnb_config(cfg), sharded=sharded)


def load_backbone(name: str, precision: str = "fp32", gradient_checkpointing: bool = False,
                  quantization=None, sharded: dict | None = None) -> Backbone:
    """Frozen model + tokenizer. Under ZeRO-3 the caller keeps an `HfDeepSpeedConfig` alive first,
    so `from_pretrained`/`from_config` build the weights already partitioned.

    `quantization` (a transformers `BitsAndBytesConfig`, see backbone.quant) loads the model
    quantized; transformers leaves the model's `_keep_in_fp32_modules` (T5's `wo`) and the
    output head unquantized. transformers never builds a quantized model inside `zero.Init`: with
    `sharded` (the run's resolved ZeRO-3 config) lrpt loads it partitioned itself, one tensor at a
    time (backbone.quant_load); without it every rank loads it whole and ZeRO-3 shards it in
    `deepspeed.initialize`."""
    config = resolve_config(name)
    dtype = DTYPES[precision]
    if name in BUILT and quantization is None:
        model, tokenizer = build_preset(name, dtype=dtype)
    elif name in BUILT:  # quantization_config needs from_pretrained: write the preset out first
        with tempfile.TemporaryDirectory() as tmp:
            model, tokenizer = _from_pretrained(_write_preset(name, tmp), name, config, dtype, quantization, sharded)
    else:
        model, tokenizer = _from_pretrained(local_model(name), name, config, dtype, quantization, sharded)
    if quantization is not None:
        prepare_loaded(model)  # training layout, shared lookup tables (backbone.quant)
    if tokenizer.pad_token_id is None:  # LLaMA tokenizers ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.requires_grad_(False)
    if gradient_checkpointing:
        # non-reentrant: the frozen blocks' inputs (prompt embeddings) carry the gradient; the reentrant
        # variant needs an input that requires grad and fails with "element 0 of tensors does not require grad"
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return Backbone(model=model, tokenizer=tokenizer, is_encoder_decoder=config.is_encoder_decoder)


def _write_preset(name: str, directory: str) -> str:
    """A preset written where this rank can read it. `save_pretrained` writes on rank 0 only once
    torch.distributed is up, and each rank needs its own copy (a node-local temporary directory)."""
    from safetensors.torch import save_model

    model, tokenizer = build_preset(name)
    model.config.save_pretrained(directory)
    save_model(model, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})  # tied tensors once
    tokenizer.save_pretrained(directory)
    return directory


def _from_pretrained(path: str, name: str, config: PretrainedConfig, dtype: torch.dtype, quantization=None,
                     sharded: dict | None = None):
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    extra = {} if quantization is None else {"quantization_config": quantization}
    try:
        if sharded is not None and quantization is not None:
            model = load_sharded(path, config, dtype, quantization, sharded)
        else:
            model = auto.from_pretrained(path, dtype=dtype, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LrptError(f"could not load model {name!r}: {exc}".splitlines()[0]) from None
    return model, tokenizer

