"""`lrpt sweep`: tasks × methods × seeds (× few-shot K) as one command, then the papers' table.

Each run gets its own directory under --output_dir; a run whose report.json exists is skipped,
so an interrupted sweep started again continues where it stopped (and each run resumes from its
own checkpoints). A run directory that holds other settings is refused before any run trains.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lrpt.eval.layouts import LAYOUTS
from lrpt.trainer.config import load_config
from lrpt.trainer.errors import LrptError


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="lrpt sweep", description=__doc__.split("\n")[0],
                                     epilog="Any other flag is passed to every run (see `lrpt train --help`).")
    parser.add_argument("--tasks", type=_names, required=True, help="comma-separated, e.g. boolq,cb,rte")
    parser.add_argument("--methods", type=_names, help="comma-separated, e.g. pt,dpt,lamp (default with --recipe: "
                                                       "the recipe's methods)")
    parser.add_argument("--recipe", help="a paper's setting for every run (`lrpt train --help`, --recipe)")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated (default 0,1,2)")
    parser.add_argument("--few_shot", "--few-shot", type=_ints, default=None, help="comma-separated K, e.g. 8,16,32")
    parser.add_argument("--output_dir", "--output-dir", required=True)
    parser.add_argument("--layout", choices=list(LAYOUTS), default="lrpt",
                        help="the table's layout (see `lrpt table --help`; a DPT recipe's table: dpt)")
    return parser.parse_known_args(argv)


def run_name(task: str, method: str, seed: int, k: int | None) -> str:
    return f"{task}-{method}-seed{seed}" + (f"-k{k}" if k else "")


def main(argv: list[str]) -> int:
    from lrpt.eval.aggregate import collect, table
    from lrpt.trainer import run_dir
    from lrpt.trainer.loop import train

    args, rest = parse(argv)
    for flag in ("--task", "--method", "--seed", "--output_dir", "--few_shot"):
        if any(a == flag or a.startswith(flag + "=") or a == flag.replace("_", "-") for a in rest):
            raise LrptError(f"lrpt sweep sets {flag} for each run itself; use --tasks/--methods/--seeds/--few_shot")
    if args.recipe:
        from lrpt.trainer import recipe

        args.methods = args.methods or recipe.methods_of(args.recipe)
        rest = [*rest, "--recipe", args.recipe]
    if not args.methods:
        raise LrptError("lrpt sweep needs --methods (or a --recipe, whose methods it runs)")
    out = Path(args.output_dir)
    plan = [(t, m, s, k) for t in args.tasks for k in (args.few_shot or [None]) for m in args.methods for s in args.seeds]
    configs = []
    for task, method, seed, k in plan:  # validate every run before training any
        flags = [*rest, "--task", task, "--method", method, "--seed", str(seed),
                 "--output_dir", str(out / run_name(task, method, seed, k))]
        cfg = load_config(flags + (["--few_shot", str(k)] if k else []))
        cfg.validate()
        run_dir.check_contract(cfg, Path(cfg.output_dir))  # a finished run is skipped only if it ran these settings
        configs.append(cfg)
    for i, cfg in enumerate(configs, 1):
        if (Path(cfg.output_dir) / "report.json").exists():
            print(f"[lrpt sweep] {i}/{len(configs)} {Path(cfg.output_dir).name}: done before, skipped", flush=True)
            continue
        print(f"[lrpt sweep] {i}/{len(configs)} {Path(cfg.output_dir).name}", flush=True)
        train(cfg)
    from lrpt.trainer import distributed
    if distributed.is_main():
        markdown, csv = table(collect([str(Path(c.output_dir)) for c in configs]), layout=args.layout)
        (out / "table.md").write_text(markdown)
        (out / "table.csv").write_text(csv)
        print(markdown)
    return 0
