"""`lrpt sweep`: tasks × methods × seeds (× few-shot K) (× a grid of any run settings) as one command, then the table.

Each run gets its own directory under --output_dir; a run whose report.json exists is skipped,
so an interrupted sweep started again continues where it stopped (and each run resumes from its
own checkpoints). A run directory that holds other settings is refused before any run trains;
--overwrite_output_dir starts every run afresh, as it does for `lrpt train`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ...eval.layouts import LAYOUTS
from ..config.grid import Point, describe, parse_grid, point_flags, point_name, points
from ..config.run_config import ALIASES, load_config
from ..errors import LrptError
from ..rundir import contract as run_dir


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="lrpt sweep", description=__doc__.split("\n")[0],
                                     epilog="Any other flag is passed to every run (see `lrpt train --help`).")
    parser.add_argument("--sweep_file", "--sweep-file", metavar="YAML",
                        help="the sweep's axes from a file (tasks, methods, seeds, few_shot, grid: {FIELD: [values]}); "
                             "flags given here add to it (--grid) or replace it (the others)")
    parser.add_argument("--tasks", type=_names, help="comma-separated, e.g. boolq,cb,rte")
    parser.add_argument("--methods", type=_names, help="comma-separated, e.g. pt,dpt,lamp (default with --recipe: "
                                                       "the recipe's methods)")
    parser.add_argument("--recipe", help="a paper's setting for every run (`lrpt train --help`, --recipe)")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated (default 0,1,2)")
    parser.add_argument("--few_shot", "--few-shot", type=_ints, default=None, help="comma-separated K, e.g. 8,16,32")
    parser.add_argument("--few_shot_draws", "--few-shot-draws", type=int, default=None, metavar="N",
                        help="with --few_shot: N draws of the K rows per K (draws 0..N-1), every seed trained on each "
                             "draw, so that the table can split the variance between the draw and the seed")
    parser.add_argument("--grid", nargs="+", action="extend", default=[], metavar="FIELD=V1,V2",
                        help="any run setting as one more axis, crossed with the others, e.g. --grid "
                             "learning_rate=0.3,0.1,0.03 rank=4,10 (each run directory is named by its point)")
    parser.add_argument("--output_dir", "--output-dir", required=True)
    parser.add_argument("--fuse", nargs="?", const="true", choices=("true", "auto"), default=None,
                        help="train each task's runs together: one backbone load, one forward and backward per step "
                             "for all of them, each run with its own prompt, optimizer, schedule, checkpoints and "
                             "report (train.fused). A group whose runs cannot share a pass (a backbone that "
                             "trains with dropout, ...) is refused; with `--fuse auto` it trains its runs one after "
                             "another instead, each as alone, and says why (the Slurm sweeps' FUSE=1)")
    parser.add_argument("--fuse_max", "--fuse-max", type=int, default=None,
                        help="with --fuse: at most N runs per group (a task's runs split into groups; memory grows "
                             "with the group: its micro-batch is the sum of its runs')")
    parser.add_argument("--fuse_group", "--fuse-group", type=int, default=None,
                        help="with --fuse: train only group G (0-based, in the order the sweep lists its groups) and "
                             "write no table: one piece of a bigger sweep, as one Slurm array element runs it "
                             "(slurm/superglue_sweep.sh FUSE=1); the template writes the whole grid's table")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="lrpt",
                        help="the table's layout (see `lrpt table --help`; a DPT recipe's table: dpt)")
    file = parser.parse_known_args(argv)[0].sweep_file
    if file:
        parser.set_defaults(**read_sweep_file(file))
    args, rest = parser.parse_known_args(argv)
    if args.tasks is None:
        raise LrptError("lrpt sweep needs --tasks (or tasks: in --sweep_file)")
    return args, rest


SWEEP_KEYS = {"tasks": str, "methods": str, "seeds": int, "few_shot": int}


def read_sweep_file(path: str) -> dict:
    """A sweep file's axes, typed as the flags type them (YAML read with safe_load: data only)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LrptError(f"--sweep_file {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise LrptError(f"--sweep_file {path}: a mapping of tasks, methods, seeds, few_shot and grid")
    unknown = sorted(set(data) - set(SWEEP_KEYS) - {"grid"})
    if unknown:
        raise LrptError(f"--sweep_file {path}: {', '.join(unknown)} not among tasks, methods, seeds, few_shot, grid "
                        "(a run's settings go in a --config file, or flags)")
    values = {}
    for key, kind in SWEEP_KEYS.items():
        if key in data:
            listed = data[key] if isinstance(data[key], list) else [data[key]]
            if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in listed):
                raise LrptError(f"--sweep_file {path}: {key} must be a list of {kind.__name__}s")
            try:
                values[key] = [kind(v) for v in listed]
            except ValueError:
                raise LrptError(f"--sweep_file {path}: {key} must be a list of {kind.__name__}s") from None
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise LrptError(f"--sweep_file {path}: grid must map each field to a list of values, e.g. "
                        "grid: {learning_rate: [0.3, 0.1]}")
    values["grid"] = [f"{field}={','.join(str(v) for v in listed)}" for field, listed in grid.items()]
    return values


def run_name(task: str, method: str, seed: int, k: int | None, point: Point = (), draw: int | None = None) -> str:
    return (f"{task}-{method}-seed{seed}" + (f"-k{k}" if k else "") + (f"-draw{draw}" if draw is not None else "")
            + point_name(point))


def shots(args: argparse.Namespace) -> list[tuple[int | None, int | None]]:
    """(K, draw) of every few-shot setting: the full data alone without --few_shot; a draw per run's seed
    without --few_shot_draws."""
    if args.few_shot_draws is not None and (not args.few_shot or args.few_shot_draws < 1):
        raise LrptError("--few_shot_draws N needs --few_shot and N >= 1")
    draws = range(args.few_shot_draws) if args.few_shot_draws else [None]
    return [(k, d) for k in args.few_shot for d in draws] if args.few_shot else [(None, None)]


def check_lists(args: argparse.Namespace) -> None:
    """Each list names something, and each value once: an empty one (an empty shell variable) would train nothing,
    or (--few_shot) the full data; a repeated one would train one run directory twice."""
    for flag in ("--tasks", "--methods", "--seeds", "--few_shot"):
        values = getattr(args, flag[2:])
        if values is None:  # --few_shot not given
            continue
        if not values:
            raise LrptError(f"lrpt sweep {flag} is empty: give a comma-separated list (an empty shell variable?)")
        repeated = [str(v) for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise LrptError(f"lrpt sweep {flag} lists {', '.join(dict.fromkeys(repeated))} more than once: each "
                            "run has one directory; give each value once")


def done_before(cfg) -> bool:
    """A finished run this sweep leaves as it is."""
    return (Path(cfg.output_dir) / "report.json").exists() and not run_dir.starts_afresh(cfg)


def fuse_groups(configs: list, most: int | None) -> list[list]:
    """The runs that can share a pass (a task's runs, at one value of every setting a fused group shares: its
    fields' Policy), in sweep order, split into groups of at most `most` (all of them: None)."""
    from ..train.fused import SHARED

    together: dict[tuple, list] = {}
    for cfg in configs:
        together.setdefault(tuple(repr(getattr(cfg, name)) for name in SHARED), []).append(cfg)
    size = most or max(len(runs) for runs in together.values())
    return [runs[i:i + size] for runs in together.values() for i in range(0, len(runs), size)]


def main(argv: list[str]) -> int:
    from ...eval.aggregate import collect, tabulate

    args, rest = parse(argv)
    if args.fuse_max is not None and (not args.fuse or args.fuse_max < 1):
        raise LrptError("--fuse_max N needs --fuse and N >= 1")
    if args.fuse_group is not None and (not args.fuse or args.fuse_group < 0):
        raise LrptError("--fuse_group G needs --fuse and G >= 0")
    for flag in ("--task", "--method", "--seed", "--output_dir", "--few_shot", "--few_shot_draw"):
        if any(a == flag or a.startswith(flag + "=") or a == flag.replace("_", "-") for a in rest):
            raise LrptError(f"lrpt sweep sets {flag} for each run itself; use --tasks/--methods/--seeds/--few_shot/"
                            "--few_shot_draws (or --grid for any other setting)")
    if args.recipe:
        from ..config import recipe

        args.methods = args.methods or recipe.methods_of(args.recipe)
        rest = [*rest, "--recipe", args.recipe]
    if args.methods is None:
        raise LrptError("lrpt sweep needs --methods (or a --recipe, whose methods it runs)")
    check_lists(args)
    axes = parse_grid(args.grid)
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in rest if a.startswith("--")}
    for axis in axes:
        if given & {axis.field, *ALIASES.get(axis.field, ())}:
            raise LrptError(f"--{axis.field} is both a flag of every run and an axis of --grid: give it once")
    out = Path(args.output_dir)
    plan = [(t, m, s, k, d, p) for t in args.tasks for k, d in shots(args)
            for m in args.methods for p in points(axes) for s in args.seeds]
    print(f"[lrpt sweep] {len(plan)} runs: {len(args.tasks)} tasks x {len(args.methods)} methods x "
          f"{len(args.seeds)} seeds" + (f" x {len(args.few_shot)} K" if args.few_shot else "")
          + (f" x {args.few_shot_draws} draws" if args.few_shot_draws else "")
          + (f" x grid ({describe(axes)})" if axes else ""), flush=True)
    configs = []
    for task, method, seed, k, draw, point in plan:  # validate every run before training any
        flags = [*rest, *point_flags(point), "--task", task, "--method", method, "--seed", str(seed),
                 "--output_dir", str(out / run_name(task, method, seed, k, point, draw))]
        flags += (["--few_shot", str(k)] if k else []) + (["--few_shot_draw", str(draw)] if draw is not None else [])
        cfg = load_config(flags)
        cfg.validate()
        if not run_dir.starts_afresh(cfg):  # a finished run is skipped only if it ran these settings
            run_dir.check_contract(cfg, Path(cfg.output_dir))
        configs.append(cfg)
    if args.fuse:
        train_groups(fuse_groups(configs, args.fuse_max), only=args.fuse_group, auto=args.fuse == "auto")
    else:
        train_in_turn(configs)
    from ..runtime import distributed

    if distributed.is_main() and args.fuse_group is None:
        tables = tabulate(collect([str(Path(c.output_dir)) for c in configs]), layout=args.layout,
                          by=[axis.field for axis in axes])  # a row per grid point (lrpt table --select chooses)
        tables.write(out / "table")  # table.md, table.csv (few-shot: table.stats.csv, table.paired.csv, plots)
        print(tables.markdown)
    return 0


def train_in_turn(configs: list) -> None:
    from ..train.loop import train

    for i, cfg in enumerate(configs, 1):
        if done_before(cfg):
            print(f"[lrpt sweep] {i}/{len(configs)} {Path(cfg.output_dir).name}: done before, skipped", flush=True)
            continue
        print(f"[lrpt sweep] {i}/{len(configs)} {Path(cfg.output_dir).name}", flush=True)
        train(cfg)


def train_groups(groups: list[list], only: int | None = None, auto: bool = False) -> None:
    """Every group checked before any trains (train.fused), then each trained in one pass; `only`: that
    group alone (--fuse_group); `auto`: a group whose runs cannot share a pass trains them one after another."""
    from ..train.fused import check_group, refusal
    from ..train.loop import train_group

    if only is not None and only >= len(groups):
        raise LrptError(f"--fuse_group {only}: this sweep has {len(groups)} fused groups (0-{len(groups) - 1}); "
                        "with FUSE=1 the Slurm templates print the --array that covers them")
    chosen = range(len(groups)) if only is None else [only]
    unfused = {n: refusal(groups[n]) for n in chosen} if auto else {}
    for n in chosen:
        if not unfused.get(n):
            check_group(groups[n])
    for n in chosen:
        group = groups[n]
        names = ", ".join(Path(cfg.output_dir).name for cfg in group)
        if unfused.get(n):
            print(f"[lrpt sweep] group {n + 1}/{len(groups)}, not fused ({unfused[n]}): {names} train one after "
                  "another, each as alone", flush=True)
            train_in_turn(group)
            continue
        todo = not all(done_before(cfg) for cfg in group)
        print(f"[lrpt sweep] group {n + 1}/{len(groups)}, fused: {names}"
              + ("" if todo else ": done before, skipped"), flush=True)
        if todo:  # the whole group: a run finished before is left as it is, and named in the others' reports
            train_group(group, fused=True)
