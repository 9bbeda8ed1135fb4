"""`lrpt <command> ...`: the console script."""
from __future__ import annotations

import argparse
import sys

from ..errors import LrptError

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
    from ..config.run_config import load_config
    from ..train.loop import train

    train(load_config(argv))
    return 0


# every other command is its module's `main(argv)`, imported only when it runs
MODULES = {"sweep": "lrpt.trainer.cli.sweep", "table": "lrpt.eval.aggregate", "export": "lrpt.trainer.cli.export",
           "predict": "lrpt.trainer.cli.predict", "rank": "lrpt.trainer.cli.spectrum",
           "bench": "lrpt.trainer.bench.throughput", "plan": "lrpt.trainer.measure.plan"}


def run_command(name: str, argv: list[str]) -> int:
    """The command, then every rank of a launch leaves the process group together: after its work was done, a
    rank that exits with the group's threads running can abort and fail the launch (and a Slurm requeue)."""
    import importlib

    try:
        code = train_command(argv) if name == "train" else importlib.import_module(MODULES[name]).main(argv)
    except SystemExit as exc:
        preempt = sys.modules.get("lrpt.trainer.runtime.preempt")
        if preempt is not None and exc.code == preempt.EXIT_CODE:  # every rank agreed to stop (stop_requested)
            _leave_launch()
        raise
    _leave_launch()
    return code


def _leave_launch() -> None:
    if "lrpt.trainer.runtime.distributed" in sys.modules:  # a command that never joined a group imports no torch here
        sys.modules["lrpt.trainer.runtime.distributed"].leave_launch()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lrpt")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="lrpt", usage="lrpt <command> [flags]   (lrpt <command> --help for its flags)",
        description="Low-rank prompt tuning on frozen backbones.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<8} {text}" for name, text in COMMANDS.items()))
    parser.add_argument("command", choices=list(COMMANDS), metavar="command", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("--version", action="store_true", help="print lrpt's version")
    if argv and argv[0] == "--version":
        print(f"lrpt {_version()}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args, rest = parser.parse_known_args(argv[:1])
    try:
        return run_command(args.command, argv[1:])
    except LrptError as exc:
        print(f"lrpt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
