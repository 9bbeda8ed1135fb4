"""Method name -> class, and `build`, the one constructor the trainer calls.

A new method is one file plus one line in REGISTRY.
"""
from __future__ import annotations

import inspect
from typing import Any

from .base import PromptModule
from .dpt import DPT
from .lamp import LAMP
from .lopt import LoPT1, LoPT2
from .prompt_tuning import PromptTuning
from .residual import ResidualPrompt

# What the backbone offers every method; a method that starts from random factors ignores it.
BACKBONE_CONTEXT = ("embedding_weight", "init_token_ids", "vocab_limit")

REGISTRY: dict[str, type[PromptModule]] = {
    cls.name: cls for cls in (PromptTuning, DPT, LoPT1, LoPT2, LAMP, ResidualPrompt)
}


def available() -> list[str]:
    return sorted(REGISTRY)


def accepted_kwargs(name: str) -> list[str]:
    """The keyword options method `name` takes besides num_tokens and embed_dim."""
    params = inspect.signature(REGISTRY[name].__init__).parameters
    return [p for p in params if p not in ("self", "num_tokens", "embed_dim")]


def build(name: str, num_tokens: int, embed_dim: int, **kw: Any) -> PromptModule:
    """Build method `name`. Keywords set to None mean "method default" and are dropped, so one
    CLI/config with shared option names (init, rank, bottleneck, pool, activation, ...) serves all
    methods; a set option the method does not take is an error rather than silently ignored.
    The backbone context (BACKBONE_CONTEXT) is offered to every method and used by those that
    start from the vocabulary."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(available())}")
    takes = accepted_kwargs(name)
    kw = {k: v for k, v in kw.items() if v is not None and (k in takes or k not in BACKBONE_CONTEXT)}
    for k in kw:
        if k not in takes:
            raise ValueError(f"method {name!r} does not take {k!r} (it takes: {', '.join(takes)})")
    return REGISTRY[name](num_tokens, embed_dim, **kw)
