"""Decomposed prompt tuning (DPT, arXiv 2310.10094): P = A·B with a small inner rank b.

The paper writes the transpose; we keep P's rows as tokens. Both factors start at
U(-0.5, 0.5) as in DPT's released code (the paper says Gaussian).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import MethodConfig, PromptModule, check_range, option, uniform

DEFAULT_RANK = 10


@dataclass
class DPTConfig(MethodConfig):
    rank: int | None = option(None, "b, the inner rank of A·B (default 10)")
    rank_probe: bool = option(False, "P = A·ReLU(Σ)·B with a trainable diagonal Σ; logs how many entries "
                                     "stay positive. DPT's probe of a full prompt: with --rank = c")


class DPT(PromptModule):
    """A ∈ R^{c×b}, B ∈ R^{b×e}; c·b + b·e parameters instead of c·e."""

    name = "dpt"
    config_class = DPTConfig

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int,
        rank: int | None = None,
        rank_probe: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_tokens, embed_dim)
        if rank is None:  # the paper's b = 10, shrunk for prompts narrower than that
            rank = min(DEFAULT_RANK, num_tokens, embed_dim)
        check_range(rank, 1, min(num_tokens, embed_dim), "rank (b)",
                    "a rank above min(c, e) adds parameters but no expressiveness")
        self.rank = rank
        self.a = nn.Parameter(uniform((num_tokens, rank), 0.5, generator))
        self.b = nn.Parameter(uniform((rank, embed_dim), 0.5, generator))
        # DPT's rank probe: P = A·ReLU(Σ)·B with a trainable diagonal Σ (starting at 1); the count of
        # positive entries over training estimates the rank the task needs.
        self.sigma = nn.Parameter(torch.ones(rank)) if rank_probe else None

    def forward(self) -> torch.Tensor:
        if self.sigma is None:
            return self.a @ self.b
        return (self.a * torch.relu(self.sigma)) @ self.b

    def diagnostics(self) -> dict[str, float]:
        return {} if self.sigma is None else {"probe_positive_rank": int((self.sigma > 0).sum())}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}" + (", probe=True" if self.sigma is not None else "")
