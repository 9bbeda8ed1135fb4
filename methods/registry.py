"""Method name -> class, the options they declare, and `build`, the one constructor the trainer calls.

A new method is one file (a PromptModule with its MethodConfig) plus one line in BUILT_IN: its
options become RunConfig fields, CLI flags, YAML keys, planner inputs and Slurm variables by
themselves. A method shipped in another package registers itself under the `lrpt.methods` entry
point group instead (`[project.entry-points."lrpt.methods"] name = "package.module:Class"`); such a
module imports from `lrpt.methods.base`.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from .base import PromptModule
from .dept import DePT
from .dpt import DPT
from .lamp import LAMP
from .lopt import LoPT1, LoPT2
from .prompt_tuning import PromptTuning
from .residual import ResidualPrompt
from .ulpt import ULPT

BUILT_IN: tuple[type[PromptModule], ...] = (PromptTuning, DPT, LoPT1, LoPT2, LAMP, ResidualPrompt, DePT, ULPT)
ENTRY_POINT_GROUP = "lrpt.methods"
# What the backbone (and the run's longest input row) offers every method; a method that does not use it ignores it.
BACKBONE_CONTEXT = ("embedding_weight", "init_token_ids", "vocab_limit", "input_positions")
# Options the trainer turns into backbone context (init_text -> init_token_ids, by the backbone's
# tokenizer): `build` drops them, so callers pass a run's options as they are.
RESOLVED_BY_TRAINER = ("init_text",)


def _plugins() -> list[type[PromptModule]]:
    found = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, PromptModule)) or getattr(cls, "name", None) != entry.name:
            raise TypeError(f"entry point {entry.name!r} = {entry.value!r} in group {ENTRY_POINT_GROUP!r} must be "
                            f"a PromptModule subclass whose `name` is {entry.name!r}")
        found.append(cls)
    return found


def _registry() -> dict[str, type[PromptModule]]:
    out: dict[str, type[PromptModule]] = {}
    for cls in (*BUILT_IN, *_plugins()):
        if cls.name in out:
            raise TypeError(f"two prompt methods are named {cls.name!r}: {out[cls.name].__module__} and "
                            f"{cls.__module__}")
        out[cls.name] = cls
    return out


REGISTRY: dict[str, type[PromptModule]] = _registry()


def available() -> list[str]:
    return sorted(REGISTRY)


def accepted_kwargs(name: str) -> list[str]:
    """The keyword options method `name` takes besides num_tokens and embed_dim."""
    params = inspect.signature(REGISTRY[name].__init__).parameters
    return [p for p in params if p not in ("self", "num_tokens", "embed_dim")]


def random_start(name: str) -> dict[str, str]:
    """The keyword that makes method `name` start from random numbers instead of the vocabulary:
    enough where only shapes matter (a prompt about to be loaded, a plan, a benchmark)."""
    return {"init": "random"} if "init" in accepted_kwargs(name) else {}


def option_names(name: str) -> list[str]:
    """The options method `name` declares (its MethodConfig's fields)."""
    return [f.name for f in dataclasses.fields(REGISTRY[name].config_class)]


@functools.cache
def option_fields() -> tuple[tuple[str, Any, dataclasses.Field], ...]:
    """Every registered method's options as (name, type, field) for dataclasses.make_dataclass, one per
    name; methods sharing a name (rank, init) must agree on its type and default. The help text
    says which method reads the option and what it means there."""
    merged: dict[str, dict] = {}
    for cls in REGISTRY.values():
        hints = typing.get_type_hints(cls.config_class)
        for f in dataclasses.fields(cls.config_class):
            entry = merged.setdefault(f.name, {"type": hints[f.name], "default": f.default, "help": {}, "aliases": {},
                                               "optimizer": f.metadata.get("optimizer", False)})
            if (entry["type"], entry["default"], entry["optimizer"]) != (hints[f.name], f.default,
                                                                         f.metadata.get("optimizer", False)):
                raise TypeError(f"method {cls.name!r} declares option {f.name!r} as {hints[f.name]} = {f.default!r}, "
                                f"another method as {entry['type']} = {entry['default']!r}; make them agree")
            entry["help"].setdefault(f.metadata.get("help", ""), []).append(cls.name)
            entry["aliases"].update(dict.fromkeys(f.metadata.get("aliases", ())))
    return tuple((name, e["type"], dataclasses.field(default=e["default"], metadata={
                "help": "; ".join(f"{', '.join(names)}: {text}" for text, names in e["help"].items()),
                "aliases": tuple(e["aliases"]), "optimizer": e["optimizer"]}))
            for name, e in merged.items())


def method_options(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The options of method `name` that `values` (a RunConfig's fields) set, for `build`. An option
    at its unset default is left to the method; one set for a method that does not declare it is
    an error rather than silently ignored. The method's MethodConfig.validate() runs on them."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(available())}")
    defaults = {option: f.default for option, _, f in option_fields()}
    given = {k: values[k] for k in defaults if k in values and values[k] != defaults[k]}
    own = option_names(name)
    stray = sorted(set(given) - set(own))
    if stray:
        raise ValueError(f"method {name!r} does not take {', '.join('--' + s for s in stray)} "
                         f"(its options: {', '.join('--' + o for o in own) or 'none'})")
    REGISTRY[name].config_class(**given).validate()
    return given


def optimizer_options() -> frozenset[str]:
    """Options the trainer's optimizer reads (a ParamGroup's learning rate and weight decay), not a constructor."""
    return frozenset(name for name, _, f in option_fields() if f.metadata.get("optimizer"))


def build(name: str, num_tokens: int, embed_dim: int, **kw: Any) -> PromptModule:
    """Build method `name`. Keywords set to None mean "method default" and are dropped, so one
    CLI/config with shared option names (init, rank, bottleneck, pool, activation, ...) serves all
    methods; a set option the method does not take is an error rather than silently ignored.
    The backbone context (BACKBONE_CONTEXT) is offered to every method and used by those that
    start from the vocabulary; the optimizer's options (optimizer_options) are left to the trainer."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(available())}")
    takes = accepted_kwargs(name)
    skip = (*RESOLVED_BY_TRAINER, *optimizer_options())
    kw = {k: v for k, v in kw.items()
          if v is not None and k not in skip and (k in takes or k not in BACKBONE_CONTEXT)}
    for k in kw:
        if k not in takes:
            raise ValueError(f"method {name!r} does not take {k!r} (it takes: {', '.join(takes)})")
    return REGISTRY[name](num_tokens, embed_dim, **kw)
