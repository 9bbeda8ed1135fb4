"""The one interface every prompt method implements, plus the initializers they share.

A method is an ``nn.Module`` that, called with no input, returns the prompt matrix
``P`` of shape ``(output_length, embed_dim)``. The trainer prepends ``P`` to the frozen
backbone's input embeddings and never needs to know which method produced it. Two optional
parts: ``token_offsets()``, an update added to the input tokens' own embeddings by position
(DePT), and ``param_groups()``, parameters trained at a learning rate of their own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

INITS = ("random", "vocab", "text")


def option(default: Any, help: str, aliases: tuple[str, ...] = (), optimizer: bool = False) -> Any:
    """A method option: a dataclass field whose help text reaches `lrpt train --help`; `aliases`: other flag
    names for it; `optimizer`: read by the trainer's optimizer (a ParamGroup names it), not the constructor."""
    return dataclasses.field(default=default, metadata={"help": help, "aliases": tuple(aliases),
                                                        "optimizer": optimizer})


@dataclass(frozen=True)
class ParamGroup:
    """Parameters trained at their own learning rate and weight decay: the method options (optimizer=True) that
    set them, their unset value meaning the run's --learning_rate / --weight_decay."""
    name: str
    params: tuple[nn.Parameter, ...]
    learning_rate: str | None = None  # the option that sets it (None: always the run's)
    weight_decay: str | None = None


@dataclass
class MethodConfig:
    """A method's own options, as peft's tuners each have a config. Every field becomes a RunConfig
    field, a flag of `lrpt train/plan/bench/sweep`, a YAML key and a Slurm variable; a field reaches the
    method's constructor under its own name. Defaults are "unset" (None, or False for a switch): the
    constructor then applies the paper's default, so several methods can share one option name."""

    def validate(self) -> None:
        """Raise ValueError (one line, naming the fix) for option values that cannot work together."""


@dataclass
class VocabInitConfig(MethodConfig):
    """For methods whose prompt starts from token embeddings. `init_text` is the one option the
    trainer turns into something else first: the backbone's tokenizer makes it `init_token_ids`."""
    init: str | None = option(None, "random | vocab | text: where the prompt starts (default vocab)")
    init_text: str | None = option(None, "text whose token embeddings initialise the prompt (--init text)")

    def validate(self) -> None:
        if self.init not in (None, *INITS):
            raise ValueError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ValueError("--init text needs --init_text 'some words'")
        if self.init_text and self.init != "text":
            raise ValueError("--init_text is read only with --init text; add --init text or drop --init_text")


def check_positive(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")


def check_range(value: int, low: int, high: int, what: str, why: str = "") -> None:
    """Raise a ValueError naming the valid range (and why it is the range) if value is outside it."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer in [{low}, {high}], got {value!r}" + (f": {why}" if why else ""))


def uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """U(-bound, bound) in float32 on the CPU; ``generator`` makes it reproducible."""
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def initial_prompt(
    num_tokens: int,
    embed_dim: int,
    init: str = "vocab",
    *,
    embedding_weight: torch.Tensor | None = None,
    init_token_ids: list[int] | None = None,
    vocab_limit: int = 5000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A fresh float32 CPU tensor of shape (num_tokens, embed_dim) to start a prompt from.

    - ``random``: U(-0.5, 0.5), T5X's choice (peft's N(0, 1) is far above the embedding scale).
    - ``vocab``: rows sampled from the first ``min(V, vocab_limit)`` rows of ``embedding_weight``
      (T5X used the top-5,000 tokens), without replacement unless more rows are asked for than
      exist. Starting on real token embeddings keeps the prompt on the scale the backbone expects.
    - ``text``: the rows of ``init_token_ids``, repeated cyclically to fill ``num_tokens`` and
      truncated if the text is longer (as peft does).
    """
    check_positive(num_tokens, "prompt length (num_tokens)")
    check_positive(embed_dim, "embedding width (embed_dim)")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    if init == "random":
        return uniform((num_tokens, embed_dim), 0.5, generator)

    if embedding_weight is None:
        raise ValueError(f"init={init!r} needs embedding_weight (the backbone's input embedding matrix); "
                         "pass it, or use init='random'")
    if embedding_weight.dim() != 2 or embedding_weight.shape[0] == 0:
        # Under ZeRO-3 an ungathered embedding is a placeholder of shape [0].
        raise ValueError("embedding_weight must be a (V, e) matrix with V >= 1, "
                         f"got shape {tuple(embedding_weight.shape)}; "
                         "under ZeRO-3 gather it first (deepspeed.zero.GatheredParameters)")
    if embedding_weight.shape[1] != embed_dim:
        raise ValueError(f"embedding_weight has width {embedding_weight.shape[1]} but embed_dim is {embed_dim}")
    vocab_size = embedding_weight.shape[0]

    if init == "vocab":
        check_positive(vocab_limit, "vocab_limit")
        n = min(vocab_size, vocab_limit)
        if num_tokens <= n:
            ids = torch.randperm(n, generator=generator)[:num_tokens]
        else:
            ids = torch.randint(n, (num_tokens,), generator=generator)
    else:  # text
        text = [int(i) for i in init_token_ids] if init_token_ids is not None else []
        if not text:
            raise ValueError("init='text' needs a non-empty init_token_ids (the tokenized init text)")
        bad = [i for i in text if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"init_token_ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
        ids = torch.tensor([text[i % len(text)] for i in range(num_tokens)])

    rows = embedding_weight.detach()[ids.to(embedding_weight.device)]
    return rows.to(device="cpu", dtype=torch.float32).clone()


class PromptModule(nn.Module):
    """Base class: holds c and e, validates them, and derives export and counting from forward()."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig  # the method's options
    offsets_tokens: ClassVar[bool] = False  # token_offsets() returns an update (a P alone cannot serve the run)

    def __init__(self, num_tokens: int, embed_dim: int):
        super().__init__()
        check_positive(num_tokens, "prompt length (num_tokens)")
        check_positive(embed_dim, "embedding width (embed_dim)")
        self.num_tokens = num_tokens
        self.embed_dim = embed_dim

    @property
    def output_length(self) -> int:
        """Rows of P (c'); only pooling methods make this differ from num_tokens."""
        return self.num_tokens

    def forward(self) -> torch.Tensor:
        raise NotImplementedError

    def token_offsets(self) -> torch.Tensor | None:
        """An update added to the input tokens' embeddings by position (row i to each row's i-th token, before P
        is prepended), shape (offset_length, embed_dim); None for a method that leaves the tokens as they are."""
        return None

    @property
    def offset_length(self) -> int | None:
        """The input positions token_offsets() covers (None: no offsets); a longer row is refused."""
        return None

    def param_groups(self) -> list[ParamGroup]:
        """The trainable parameters by learning rate; one group at the run's own by default."""
        return [ParamGroup("prompt", tuple(p for p in self.parameters() if p.requires_grad))]

    @torch.no_grad()
    def dense(self) -> torch.Tensor:
        """A detached copy of P for export; clone so it never aliases a parameter."""
        return self.forward().detach().clone()

    def num_trainable_params(self) -> int:
        # `ds_numel`: under ZeRO-3 a parameter holds only its shard and reports numel() == 0
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.parameters() if p.requires_grad)

    def diagnostics(self) -> dict[str, float]:
        """Numbers worth logging during training (e.g. DPT's rank probe); none by default."""
        return {}

    def num_kept_params(self) -> int:
        """What must be stored to serve the prompt after training: the dense P."""
        return self.output_length * self.embed_dim

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, embed_dim={self.embed_dim}"
