"""Recipes: a paper's setting as one YAML file (trainer/config/recipes/<name>.yaml), loadable by name.

A recipe holds RunConfig fields, plus a `methods:` mapping of method name -> that method's options,
so that one protocol serves every method the paper ran with it (DPT's Table 1: pt, residual, dpt).
`--recipe NAME` (train, sweep, plan; `RECIPE=` in the Slurm sweeps) loads it under the defaults and
under any flag; `--method` picks the section, default the recipe's `method`. The file's header says
where every value comes from and what the paper leaves open.

    python -m lrpt.trainer.config.recipe                  # the recipes, one per line
    python -m lrpt.trainer.config.recipe methods NAME     # its methods (for the Slurm sweeps' METHODS)
"""
from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import LrptError


def available() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in files("lrpt.trainer.config.recipes").iterdir()
                  if p.name.endswith(".yaml"))


def path_of(name: str) -> str:
    """A shipped recipe by name, or a recipe file by path."""
    if Path(name).expanduser().is_file():
        return str(Path(name).expanduser())
    if name not in available():
        raise LrptError(f"no recipe {name!r}; recipes: {', '.join(available())} (or a path to a recipe file)")
    return str(files("lrpt.trainer.config.recipes") / f"{name}.yaml")


def apply_methods(data: dict[str, Any], method: str | None, path: str) -> dict[str, Any]:
    """A recipe's fields with its `methods:` section for `method` (default: the recipe's `method`) merged in."""
    sections = data.pop("methods")
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise LrptError(f"config file {path!r}: `methods:` must map each method name to its options")
    chosen = method or data.get("method") or next(iter(sections), None)
    if chosen not in sections:
        raise LrptError(f"recipe {path!r} has settings for {', '.join(sections)}, not for --method {chosen}")
    return {**data, "method": chosen, **sections[chosen]}


def methods_of(name: str) -> list[str]:
    import yaml

    data = yaml.safe_load(Path(path_of(name)).read_text()) or {}
    return list(data.get("methods") or [data.get("method")])


def main(argv: list[str]) -> int:
    if argv[:1] == ["methods"] and len(argv) == 2:
        print(" ".join(methods_of(argv[1])))
    elif not argv:
        print("\n".join(available()))
    else:
        print("usage: python -m lrpt.trainer.config.recipe [methods NAME]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except LrptError as exc:
        sys.exit(f"lrpt: error: {exc}")
