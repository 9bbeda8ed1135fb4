"""Soft-prompt methods: each is a PromptModule that returns the prompt matrix P (c' × e)."""
from .base import PromptModule, initial_prompt
from .registry import REGISTRY, accepted_kwargs, available, build


def count_trainable(module: PromptModule) -> int:
    """Number of trainable parameters (what the optimizer updates)."""
    return module.num_trainable_params()


__all__ = ["PromptModule", "REGISTRY", "accepted_kwargs", "available", "build", "count_trainable", "initial_prompt"]
