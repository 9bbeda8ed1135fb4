"""The environment variable of every RunConfig field: what slurm/common.sh turns into trainer flags.

A field's variable is its name upper-cased (`--per_device_train_batch_size` is
`PER_DEVICE_TRAIN_BATCH_SIZE`), so a method's new option is a Slurm variable as soon as the method
is registered. Where that name is one a launcher sets for every process, the variable has a
`PROMPT_` prefix instead (`--rank` is `PROMPT_RANK`: `RANK` is the process rank); `--local_rank`
is the launcher's alone. `CONFIG` is `--config`. slurm/common.sh also maps the old spellings
(ALIASES) onto these before a template sets its defaults.

`python -m lrpt.trainer.config.slurm_env` prints one `VARIABLE<TAB>field` line per field.
"""
from __future__ import annotations

import dataclasses
import sys

from .run_config import RunConfig

LAUNCHER_SET = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"}
NOT_FROM_ENV = {"local_rank"}
# old variable -> the variable it now spells (slurm/common.sh: lrpt_alias)
ALIASES = {"BATCH_SIZE": "PER_DEVICE_TRAIN_BATCH_SIZE", "DS_CONFIG": "DEEPSPEED", "EPOCHS": "NUM_TRAIN_EPOCHS",
           "GRAD_ACCUM": "GRADIENT_ACCUMULATION_STEPS"}


def variable(field: str) -> str:
    name = field.upper()
    return f"PROMPT_{name}" if name in LAUNCHER_SET else name


def variables() -> dict[str, str]:
    """Environment variable -> RunConfig field (and CONFIG -> config)."""
    out = {variable(f.name): f.name for f in dataclasses.fields(RunConfig) if f.name not in NOT_FROM_ENV}
    out["CONFIG"] = "config"
    return out


def main() -> int:
    for var, field in variables().items():
        print(f"{var}\t{field}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
