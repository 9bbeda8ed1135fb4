"""DePT (Shi & Lipani, ICLR 2024, arXiv 2309.05173): a shorter soft prompt plus a low-rank update of the input
tokens' own embeddings, trained at two learning rates.

As its released code does it: a prompt P (m × e); A (s × r) drawn as torch's kaiming_uniform_(a=√5), i.e.
U(-1/√r, 1/√r), and B (r × e) zeros, so the update starts at nothing; the update α/√r · A·B is added to the
input embeddings position by position (row i to the i-th input token, before P is prepended; the code pads
every input to s = max_length, lrpt pads to the batch's longest row and leaves pads, which nothing attends to,
as they are); P and the pair A, B take separate learning rates (`--offset_learning_rate`, its
`lora_embedding_lr`). Its code's defaults: r = 30 (train.py), α = 8, s = max_seq_length (256); m·e + r·(s + e)
parameters (m = 60, r = 30, s = 256 on T5-Base: 76,800, the count of a 100-token prompt).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import (
    ParamGroup,
    PromptModule,
    VocabInitConfig,
    check_positive,
    check_range,
    initial_prompt,
    option,
    uniform,
)

DEFAULT_RANK, DEFAULT_ALPHA, DEFAULT_OFFSET_LENGTH = 30, 8.0, 256


@dataclass
class DePTConfig(VocabInitConfig):
    rank: int | None = option(None, "r, the rank of the input update A·B (default 30, at most the width)")
    alpha: float | None = option(None, "α: the update is scaled by α/√r (default 8)")
    offset_length: int | None = option(None, "s, the input positions A covers (DePT's max_length; default: the "
                                             "longest input row, --max_source_length, decoder-only + "
                                             "--max_target_length); a longer row is refused", aliases=("max_length",))
    offset_learning_rate: float | None = option(None, "the learning rate of A and B (DePT's lora_embedding_lr; "
                                                      "default: --learning_rate)", aliases=("lora_embedding_lr",),
                                                optimizer=True)
    offset_weight_decay: float | None = option(None, "the weight decay of A and B (default: --weight_decay)",
                                               optimizer=True)

    def validate(self) -> None:
        super().validate()
        if self.offset_learning_rate is not None and not self.offset_learning_rate > 0:
            raise ValueError(f"--offset_learning_rate must be > 0, got {self.offset_learning_rate}")
        if self.offset_weight_decay is not None and self.offset_weight_decay < 0:
            raise ValueError(f"--offset_weight_decay must be >= 0, got {self.offset_weight_decay}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"--alpha must be > 0, got {self.alpha}")


class DePT(PromptModule):
    """P ∈ R^{m×e}, A ∈ R^{s×r}, B ∈ R^{r×e}; m·e + s·r + r·e parameters."""

    name = "dept"
    config_class = DePTConfig
    offsets_tokens = True

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int,
        rank: int | None = None,
        alpha: float | None = None,
        offset_length: int | None = None,
        init: str = "vocab",
        embedding_weight: torch.Tensor | None = None,
        init_token_ids: list[int] | None = None,
        vocab_limit: int = 5000,
        input_positions: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(num_tokens, embed_dim)
        # DePT's code sets max_length to the run's max_seq_length: here the longest input row the run can give
        length = offset_length or input_positions or DEFAULT_OFFSET_LENGTH
        check_positive(length, "offset_length (s)")
        rank = min(DEFAULT_RANK, length, embed_dim) if rank is None else rank  # shrunk for a narrower backbone
        check_range(rank, 1, min(length, embed_dim), "rank (r)",
                    "a rank above min(s, e) adds parameters but no expressiveness")
        self.init, self.rank, self.alpha = init, rank, DEFAULT_ALPHA if alpha is None else float(alpha)
        self._offset_length = length
        self.prompt = nn.Parameter(initial_prompt(
            num_tokens, embed_dim, init, embedding_weight=embedding_weight,
            init_token_ids=init_token_ids, vocab_limit=vocab_limit, generator=generator))
        self.a = nn.Parameter(uniform((length, rank), 1 / math.sqrt(rank), generator))
        self.b = nn.Parameter(torch.zeros(rank, embed_dim))

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank)

    @property
    def offset_length(self) -> int:
        return self._offset_length

    def forward(self) -> torch.Tensor:
        return self.prompt

    def token_offsets(self) -> torch.Tensor:
        return self.scaling * (self.a @ self.b)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("prompt", (self.prompt,)),
                ParamGroup("offset", (self.a, self.b), "offset_learning_rate", "offset_weight_decay")]

    def num_kept_params(self) -> int:
        """The dense P and the dense update (s × e) it adds."""
        return (self.num_tokens + self.offset_length) * self.embed_dim

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, offset_length={self.offset_length}, "
                f"init={self.init!r}")
