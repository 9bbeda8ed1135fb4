"""Residual prompt tuning (Razdaibiedina et al. 2023): a shared MLP with a skip connection
reparameterizes the prompt, which the authors report stabilizes and speeds up training."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import PromptModule, VocabInitConfig, check_positive, initial_prompt, option

DEFAULT_BOTTLENECK = 400  # DPT's reproduction with c = 100; the authors' code uses 800 with c = 10


@dataclass
class ResidualConfig(VocabInitConfig):
    bottleneck: int | None = option(None, "m, the MLP's hidden width (default 400)")


def _reset_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """nn.Linear's own default init, drawn from `generator` so a seeded build is reproducible."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(layer.in_features)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class ResidualPrompt(PromptModule):
    """P' = LN(W2·ReLU(W1·P + b1) + b2) + P, one MLP shared by all c tokens.

    Trains c·e + 2·e·m + m + e + 2e parameters, but after training only the output P'
    (c·e numbers) needs keeping: the MLP is a training-time device, so num_kept_params
    (the base class's dense-P count) is c·e.
    """

    name = "residual"
    config_class = ResidualConfig

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int,
        bottleneck: int = DEFAULT_BOTTLENECK,
        init: str = "vocab",
        embedding_weight: torch.Tensor | None = None,
        init_token_ids: list[int] | None = None,
        vocab_limit: int = 5000,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_tokens, embed_dim)
        check_positive(bottleneck, "bottleneck (m)")
        self.bottleneck, self.init = bottleneck, init
        self.prompt = nn.Parameter(initial_prompt(
            num_tokens, embed_dim, init, embedding_weight=embedding_weight,
            init_token_ids=init_token_ids, vocab_limit=vocab_limit, generator=generator))
        self.mlp = nn.Sequential(nn.Linear(embed_dim, bottleneck), nn.ReLU(), nn.Linear(bottleneck, embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        if generator is not None:
            _reset_linear(self.mlp[0], generator)
            _reset_linear(self.mlp[2], generator)

    def forward(self) -> torch.Tensor:
        return self.norm(self.mlp(self.prompt)) + self.prompt

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bottleneck={self.bottleneck}, init={self.init!r}"
