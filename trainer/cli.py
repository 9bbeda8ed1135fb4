"""`lrpt <command> ...`: the console script."""
from __future__ import annotations

import argparse
import sys

from trainer.errors import LrptError

COMMANDS = {
    "train": "train a soft prompt on a frozen backbone (`lrpt train --help`)",
    "sweep": "tasks x methods x seeds (x few-shot K), then the table (`lrpt sweep --help`)",
    "table": "aggregate finished runs into the papers' table (`lrpt table --help`)",
    "export": "write a run's prompt as a peft prompt-tuning adapter (`lrpt export --help`)",
    "predict": "answer new inputs with a trained prompt (`lrpt predict --help`)",
    "rank": "singular-value spectrum of trained prompts, with a plot (`lrpt rank --help`)",
    "bench": "throughput and memory of methods x prompt lengths, against peft (`lrpt bench --help`)",
    "plan": "predict per-rank GPU memory of a run before submitting it (`lrpt plan --help`)",
}


def train_command(argv: list[str]) -> int:
    from trainer.config import load_config
    from trainer.loop import train

    train(load_config(argv))
    return 0


def sweep_command(argv: list[str]) -> int:
    from trainer.sweep import main as sweep

    return sweep(argv)


def table_command(argv: list[str]) -> int:
    from eval.aggregate import main as table

    return table(argv)


def export_command(argv: list[str]) -> int:
    from trainer.export import main as export

    return export(argv)


def predict_command(argv: list[str]) -> int:
    from trainer.predict import main as predict

    return predict(argv)


def rank_command(argv: list[str]) -> int:
    from trainer.spectrum import main as rank

    return rank(argv)


def bench_command(argv: list[str]) -> int:
    from trainer.bench import main as bench

    return bench(argv)


def plan_command(argv: list[str]) -> int:
    from trainer.memory_plan import main as plan

    return plan(argv)


HANDLERS = {"bench": bench_command, "plan": plan_command, "train": train_command, "sweep": sweep_command, "table": table_command, "export": export_command,
            "predict": predict_command, "rank": rank_command}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lrpt", description="Low-rank prompt tuning on frozen backbones.")
    parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args, rest = parser.parse_known_args(argv[:1])
    try:
        return HANDLERS[args.command](argv[1:])
    except LrptError as exc:
        print(f"lrpt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
