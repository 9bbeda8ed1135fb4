"""A sweep's grid: any RunConfig field as an axis (`lrpt sweep --grid learning_rate=0.3,0.1 rank=4,10`).

The grid is crossed with the sweep's own axes (tasks, methods, seeds, few-shot K). Each point is a set of
flags given to every run at that point, typed and checked as `lrpt train` checks them, and names the run
directory (`rte-dpt-seed0-learning_rate0.3-rank4`), so a sweep started again finds every point where it
left it.
"""
from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass

from ..errors import LrptError
from .run_config import ALIASES, policies

OWN_AXES = {"task": "--tasks", "method": "--methods", "seed": "--seeds", "few_shot": "--few_shot",
            "few_shot_draw": "--few_shot_draws",
            "output_dir": "--output_dir"}  # the sweep's own: given by its own flags


@dataclass(frozen=True)
class Axis:
    field: str
    values: tuple[str, ...]


Point = tuple[tuple[str, str], ...]  # (field, value) per axis, in the order the axes were given


def field_of(name: str) -> str:
    """The RunConfig field a grid axis names: the field itself, an alias of it, either spelled with - or _."""
    name = name.strip().replace("-", "_")
    fields = policies()
    if name in fields:
        return name
    for field, aliases in ALIASES.items():
        if name in aliases:
            return field
    raise LrptError(f"--grid {name}: not a setting of a run (`lrpt train --help` lists them)")


def parse_grid(items: list[str]) -> list[Axis]:
    """`FIELD=V1,V2,...` items into axes: every field a run setting named once, every value list non-empty and
    without repeats, each value naming its run directory apart from the others."""
    axes: list[Axis] = []
    for item in items:
        name, sep, listed = item.partition("=")
        values = tuple(v.strip() for v in listed.split(",") if v.strip())
        if not sep or not values:
            raise LrptError(f"--grid {item!r}: write FIELD=V1,V2 (e.g. learning_rate=0.3,0.1)")
        field = field_of(name)
        if field in OWN_AXES:
            raise LrptError(f"--grid {field}: the sweep sets it itself; use {OWN_AXES[field]}")
        if any(axis.field == field for axis in axes):
            raise LrptError(f"--grid names {field} twice: give all its values in one FIELD=V1,V2")
        if len(set(values)) < len(values) or len({_safe(v) for v in values}) < len(values):
            raise LrptError(f"--grid {field}: each value once (a repeated one would train one run directory twice)")
        axes.append(Axis(field, values))
    return axes


def points(axes: list[Axis]) -> list[Point]:
    """Every point of the grid, the last axis varying fastest; one empty point for no grid."""
    return [tuple(zip([a.field for a in axes], combo)) for combo in itertools.product(*(a.values for a in axes))]


def point_flags(point: Point) -> list[str]:
    return [part for field, value in point for part in (f"--{field}", value)]


def point_name(point: Point) -> str:
    """The point's part of a run directory's name ('' for no grid)."""
    return "".join(f"-{field}{_safe(value)}" for field, value in point)


def label(point: Point) -> str:
    return " ".join(f"{field}={value}" for field, value in point)


def describe(axes: list[Axis]) -> str:
    return " x ".join(f"{len(a.values)} {a.field}" for a in axes)


def _safe(value: str) -> str:
    """A value as a directory name can hold it (a path's separators become _)."""
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", value)


def main(argv: list[str]) -> int:
    """`python -m lrpt.trainer.config.grid FIELD=V1,V2 ...`, what the Slurm sweeps read their GRID with: one line
    per axis, `FIELD<TAB>VARIABLE<TAB>PER_RUN<TAB>V1 V2` (its environment variable; 1 where a fused group's runs
    may differ in it). A value must name its run directory as it is, since the templates name runs in bash."""
    from .slurm_env import variable

    try:
        axes = parse_grid(argv)
        for axis in axes:
            renamed = [v for v in axis.values if _safe(v) != v]
            if renamed:
                raise LrptError(f"GRID {axis.field}={','.join(axis.values)}: {renamed[0]!r} cannot name a run "
                                "directory as it is; give a value without / or spaces")
    except LrptError as exc:
        print(f"lrpt: {exc}", file=sys.stderr)
        return 2
    for axis in axes:
        print(f"{axis.field}\t{variable(axis.field)}\t{int(policies()[axis.field].per_run)}\t{' '.join(axis.values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
