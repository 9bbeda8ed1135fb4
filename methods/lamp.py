"""LAMP (arXiv 2502.12200): train the truncated SVD of an initial prompt, then pool tokens.

P0 (vocabulary-sampled by default) is split as U·diag(S)·Vh; the top r singular triplets
become the parameters. The paper rebuilds P as the sum of r outer products
Q[i]·(U[:, i] ⊗ V[i, :]); that is exactly (U * Q) @ V, which we compute as one matmul.
Average pooling over blocks of p tokens then shortens the prompt the backbone sees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import PromptModule, VocabInitConfig, check_range, initial_prompt, option

DEFAULT_RANK = 8


@dataclass
class LAMPConfig(VocabInitConfig):
    rank: int | None = option(None, "r, the truncated SVD's rank (default 8)")
    pool: int | None = option(None, "p, the average-pooling block: ⌈c/p⌉ prompt tokens reach the backbone "
                                    "(default 1: none)", aliases=("lamp_pool",))


def block_mean(x: torch.Tensor, pool: int) -> torch.Tensor:
    """Mean over non-overlapping blocks of `pool` rows; a shorter last block averages only its own rows."""
    if pool == 1:
        return x
    full = x.shape[0] // pool * pool
    blocks = [x[:full].reshape(-1, pool, x.shape[1]).mean(dim=1)]
    if full < x.shape[0]:
        blocks.append(x[full:].mean(dim=0, keepdim=True))
    return torch.cat(blocks)


class LAMP(PromptModule):
    """U ∈ R^{c×r}, Q ∈ R^r, V ∈ R^{r×e}; c·r + r + r·e parameters; ⌈c/p⌉ output rows."""

    name = "lamp"
    config_class = LAMPConfig

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int,
        rank: int | None = None,
        pool: int = 1,
        init: str = "vocab",
        embedding_weight: torch.Tensor | None = None,
        init_token_ids: list[int] | None = None,
        vocab_limit: int = 5000,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_tokens, embed_dim)
        if rank is None:  # the paper's r = 8, shrunk for prompts narrower than that
            rank = min(DEFAULT_RANK, num_tokens, embed_dim)
        check_range(rank, 1, min(num_tokens, embed_dim), "rank (r)",
                    "P0 has only min(c, e) singular values")
        check_range(pool, 1, num_tokens, "pool (p)", "a block cannot be longer than the prompt")
        self.rank, self.pool, self.init = rank, pool, init
        p0 = initial_prompt(num_tokens, embed_dim, init, embedding_weight=embedding_weight,
                            init_token_ids=init_token_ids, vocab_limit=vocab_limit, generator=generator)
        # float64 SVD so that a full-rank reconstruction matches P0 to float32 precision.
        u, s, vh = torch.linalg.svd(p0.double(), full_matrices=False)
        self.u = nn.Parameter(u[:, :rank].float().contiguous())
        self.q = nn.Parameter(s[:rank].float().contiguous())
        self.v = nn.Parameter(vh[:rank].float().contiguous())

    @property
    def output_length(self) -> int:
        return math.ceil(self.num_tokens / self.pool)

    def forward(self) -> torch.Tensor:
        return block_mean((self.u * self.q) @ self.v, self.pool)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, pool={self.pool}, init={self.init!r}"
