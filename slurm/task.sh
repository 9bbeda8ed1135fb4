#!/usr/bin/env bash
# One srun task is one rank: name it the way torch.distributed reads it, then become the trainer
# (exec, so that Slurm's signals reach the Python process itself). Used by slurm/common.sh.
set -euo pipefail
export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
exec "$@"
