#!/usr/bin/env bash
# One srun task is one rank: name it the way torch.distributed reads it, then become the trainer
# (exec, so that Slurm's signals reach the Python process itself). Used by slurm/common.sh.
set -euo pipefail
export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
# a line per rank in the job's log: which node each rank runs on (as Slurm names it; one host may run several)
echo "lrpt: rank $RANK of $WORLD_SIZE (local rank $LOCAL_RANK) on ${SLURMD_NODENAME:-$(hostname -s)}" >&2
exec "$@"
