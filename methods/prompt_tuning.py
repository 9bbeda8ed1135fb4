"""Prompt tuning (Lester et al. 2021): the prompt matrix itself is the parameter."""
from __future__ import annotations

import torch
from torch import nn

from .base import PromptModule, VocabInitConfig, initial_prompt


class PromptTuning(PromptModule):
    """P ∈ R^{c×e}, trained directly; c·e parameters."""

    name = "pt"
    config_class = VocabInitConfig

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int,
        init: str = "vocab",
        embedding_weight: torch.Tensor | None = None,
        init_token_ids: list[int] | None = None,
        vocab_limit: int = 5000,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_tokens, embed_dim)
        self.init = init
        self.prompt = nn.Parameter(initial_prompt(
            num_tokens, embed_dim, init, embedding_weight=embedding_weight,
            init_token_ids=init_token_ids, vocab_limit=vocab_limit, generator=generator))

    def forward(self) -> torch.Tensor:
        return self.prompt

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init={self.init!r}"
