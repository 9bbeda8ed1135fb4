"""Tiny random backbones built in-process: the embedded default and the tests need no download.

Both use ByT5's byte-level tokenizer, which has no vocabulary file, so nothing is fetched.
Weights are random (seeded): scores on them mean nothing; they exercise every code path.
"""
from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, ByT5Tokenizer, LlamaConfig,
                          PretrainedConfig, PreTrainedModel, T5Config)

PRESETS = ("tiny-t5", "tiny-llama")


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
    raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")


def build_preset(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, **sizes) -> tuple[PreTrainedModel, ByT5Tokenizer]:
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
