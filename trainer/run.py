"""Entry point for launchers: `deepspeed trainer/run.py ...`, `torchrun trainer/run.py ...`,
`srun python trainer/run.py ...` and `python -m lrpt.trainer.run ...` all land here; `... trainer/run.py sweep ...`
runs `lrpt sweep` on every rank (a fused sweep under ZeRO-3)."""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file: drop trainer/ from sys.path so its modules cannot shadow top-level ones.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]


def main(argv: list[str] | None = None) -> int:
    try:
        from lrpt.trainer.cli.main import main as cli_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("lrpt", "lrpt.trainer"):
            raise
        sys.exit(f"{sys.executable} has no lrpt installed: `pip install -e .` in the lrpt checkout, or launch the "
                 "interpreter of the environment that has it")

    argv = sys.argv[1:] if argv is None else argv
    # `deepspeed trainer/run.py sweep --fuse ...`: a sweep on every rank
    from lrpt.trainer.runtime.distributed import without_launcher_args

    rest = without_launcher_args(argv)
    if rest[:1] == ["sweep"]:
        return cli_main(rest)
    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
