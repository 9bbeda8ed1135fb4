"""ULPT (Wu, Hao & Mou, arXiv 2502.04501): an n × r prompt through a frozen random up-projection, then a learned
scale and shift per embedding dimension.

As its released code does it (peft/tuners/prompt_tuning_lodim.py): Z (n × r) drawn N(0, 1) (an nn.Embedding's
default); the projection W (r × e) drawn Xavier-uniform, U(±√(6 / (r + e))), one for every token and never
trained; P = scale ⊙ (Z·W) + shift with scale starting at 1 and shift at 0. n·r + 2e trainable parameters
(n = 100, r = 2 on T5-Base: 1,736). The code regenerates W from a saved random state; lrpt keeps W with the
prompt (a buffer of the method's state), so a run reopened or resumed computes the very same P.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import MethodConfig, PromptModule, check_range, option

DEFAULT_RANK = 2  # the README's and train.sh's R (train.py's own default, 64, is not what they run)


@dataclass
class ULPTConfig(MethodConfig):
    rank: int | None = option(None, "r, the prompt's dimension before the frozen projection (default 2)")


class ULPT(PromptModule):
    """Z ∈ R^{n×r}, scale and shift ∈ R^e trained; W ∈ R^{r×e} frozen; n·r + 2e parameters."""

    name = "ulpt"
    config_class = ULPTConfig

    def __init__(self, num_tokens: int, embed_dim: int, rank: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__(num_tokens, embed_dim)
        rank = DEFAULT_RANK if rank is None else rank
        check_range(rank, 1, embed_dim, "rank (r)", "the projection goes up to the embedding width")
        self.rank = rank
        self.z = nn.Parameter(torch.randn(num_tokens, rank, generator=generator))
        limit = math.sqrt(6 / (rank + embed_dim))
        self.register_buffer("projection", (torch.rand(rank, embed_dim, generator=generator) * 2 - 1) * limit)
        self.scale = nn.Parameter(torch.ones(embed_dim))
        self.shift = nn.Parameter(torch.zeros(embed_dim))

    def forward(self) -> torch.Tensor:
        return self.scale * (self.z @ self.projection) + self.shift

    def num_kept_params(self) -> int:
        """The dense P (or Z, W, scale and shift: n·r + r·e + 2e, fewer where n is large)."""
        return self.num_tokens * self.embed_dim

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
