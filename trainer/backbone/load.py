"""Load a frozen backbone (preset, hub name, local path or GGUF file) and its tokenizer."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer,
                          PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase)

from . import gguf
from ..errors import LrptError
from .presets import BUILT, PACKAGED, PRESETS, build_preset, packaged_file, preset_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_encoder_decoder: bool

    @property
    def embed_dim(self) -> int:
        return self.model.get_input_embeddings().embedding_dim


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that is not a directory is a path typo."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def local_model(name: str) -> str:
    """What `from_pretrained` reads for a `--model` value, the one place a value becomes a checkpoint: a GGUF
    file (or a preset that names one) becomes its converted safetensors directory (trainer/backbone/gguf.py,
    converted on first use), a directory or hub name stays itself. Built presets have no checkpoint."""
    if name in BUILT:
        raise ValueError(f"{name} is built in-process (presets.build_preset), not read from a checkpoint")
    if name in PACKAGED:
        name = packaged_file(name)
    if gguf.is_gguf(name):
        return gguf.local_dir(name)
    if _looks_like_path(name) and not os.path.isdir(os.path.expanduser(name)):
        raise LrptError(f"model path {name!r} does not exist (give a local directory written by save_pretrained, "
                        f"a .gguf file, a hub name such as google/t5-v1_1-base, or a preset: {', '.join(PRESETS)})")
    return os.path.expanduser(name)


def resolve_config(name: str) -> PretrainedConfig:
    """The backbone's config alone: enough to validate a run before loading weights (a GGUF is converted
    here, once, so that everything after reads a plain checkpoint)."""
    if name in BUILT:
        return preset_config(name)
    path = local_model(name)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LrptError(f"could not load model {name!r}: {exc}".splitlines()[0] +
                        " (offline? set HF_HUB_OFFLINE=1 and use a cached name or a local path)") from None


def load_backbone(name: str, precision: str = "fp32", gradient_checkpointing: bool = False,
                  quantization=None, sharded: dict | None = None) -> Backbone:
    """Frozen model + tokenizer. Under ZeRO-3 the caller keeps an `HfDeepSpeedConfig` alive first,
    so `from_pretrained`/`from_config` build the weights already partitioned.

    `quantization` (a transformers `BitsAndBytesConfig`, see trainer/backbone/quant.py) loads the model
    quantized; transformers leaves the model's `_keep_in_fp32_modules` (T5's `wo`) and the
    output head unquantized. transformers never builds a quantized model inside `zero.Init`: with
    `sharded` (the run's resolved ZeRO-3 config) lrpt loads it partitioned itself, one tensor at a
    time (trainer/backbone/quant_load.py); without it every rank loads it whole and ZeRO-3 shards it in
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
        from .quant import prepare_loaded

        prepare_loaded(model)  # training layout, shared lookup tables (trainer/backbone/quant.py)
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
            from .quant_load import load_sharded

            model = load_sharded(path, config, dtype, quantization, sharded)
        else:
            model = auto.from_pretrained(path, dtype=dtype, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LrptError(f"could not load model {name!r}: {exc}".splitlines()[0]) from None
    return model, tokenizer

