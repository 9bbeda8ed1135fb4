"""Low-rank prompt tuning (LoPT, arXiv 2406.19486), both variants.

LoPT-1 factors the prompt, X = U·V. LoPT-2 maps a fixed random matrix through a rank-r
bottleneck, X = σ(X0·U)·V, so its size no longer depends on c.

The paper only says "uniform random"; we pick the bounds so that, at init, the entries of X
have about the variance of U(-0.5, 0.5) (1/12), the scale T5X's random prompt init uses,
whatever the rank and width. A fixed U(-0.5, 0.5) per factor would instead make X's scale grow
with r (LoPT-1) or with e (LoPT-2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import MethodConfig, PromptModule, check_range, option, uniform

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU, "relu": nn.ReLU, "gelu": nn.GELU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity,
}


@dataclass
class LoPT1Config(MethodConfig):
    rank: int | None = option(None, "r, the rank of U·V (default ⌊c/4⌋)")


@dataclass
class LoPT2Config(MethodConfig):
    rank: int | None = option(None, "r, the bottleneck of σ(X₀U)·V (default ⌊c/4⌋)")
    activation: str | None = option(None, f"σ: {' | '.join(ACTIVATIONS)} (default elu)")


def default_rank(num_tokens: int) -> int:
    """The paper's r = ⌊c/4⌋ (c = 20, r = 5 was among the best), at least 1."""
    return max(1, num_tokens // 4)


class LoPT1(PromptModule):
    """X = U·V, U ∈ R^{c×r}, V ∈ R^{r×e}; r·(c + e) parameters."""

    name = "lopt1"
    config_class = LoPT1Config

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int,
        rank: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_tokens, embed_dim)
        if rank is None:
            rank = min(default_rank(num_tokens), embed_dim)
        check_range(rank, 1, min(num_tokens, embed_dim), "rank (r)",
                    "a rank above min(c, e) adds parameters but no expressiveness")
        self.rank = rank
        # Var(U(-a, a)) = a²/3 and Var(X_ij) = r·(a²/3)²; setting it to 1/12 gives a = (3/(4r))^¼.
        bound = (3 / (4 * rank)) ** 0.25
        self.u = nn.Parameter(uniform((num_tokens, rank), bound, generator))
        self.v = nn.Parameter(uniform((rank, embed_dim), bound, generator))

    def forward(self) -> torch.Tensor:
        return self.u @ self.v

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


class LoPT2(PromptModule):
    """X = σ(X0·U)·V with X0 ∈ R^{c×e} fixed, U ∈ R^{e×r}, V ∈ R^{r×e}; 2·r·e parameters."""

    name = "lopt2"
    config_class = LoPT2Config

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int,
        rank: int | None = None,
        activation: str = "elu",
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_tokens, embed_dim)
        if rank is None:
            rank = min(default_rank(num_tokens), embed_dim)
        check_range(rank, 1, embed_dim, "rank (r)",
                    "U is e×r, so a rank above e adds parameters but no expressiveness")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        self.rank = rank
        self.activation = activation
        self.act = ACTIVATIONS[activation]()
        # X0 is part of the prompt's definition: a persistent buffer, so state_dict reproduces P.
        self.register_buffer("x0", uniform((num_tokens, embed_dim), 0.5, generator))
        # Var(X0_ij) = 1/12, so U(-6/√e, 6/√e) gives pre-activations of variance 1 ...
        self.u = nn.Parameter(uniform((embed_dim, rank), 6 / math.sqrt(embed_dim), generator))
        # ... and V = U(-0.5/√r, 0.5/√r) gives Var(X) = E[σ(h)²]/12 (≈ 0.64/12 for ELU).
        self.v = nn.Parameter(uniform((rank, embed_dim), 0.5 / math.sqrt(rank), generator))

    def forward(self) -> torch.Tensor:
        return self.act(self.x0 @ self.u) @ self.v

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, activation={self.activation!r}"
