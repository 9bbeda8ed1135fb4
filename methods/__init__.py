"""Soft-prompt methods: each is a PromptModule that returns the prompt matrix P (c' × e)."""
from .base import MethodConfig, PromptModule, initial_prompt, option
from .registry import (
    REGISTRY,
    accepted_kwargs,
    available,
    build,
    method_options,
    option_fields,
    option_names,
    random_start,
)


def count_trainable(module: PromptModule) -> int:
    """Number of trainable parameters (what the optimizer updates)."""
    return module.num_trainable_params()


__all__ = ["MethodConfig", "PromptModule", "REGISTRY", "accepted_kwargs", "available", "build", "count_trainable",
           "initial_prompt", "method_options", "option", "option_fields", "option_names", "random_start"]
