#!/usr/bin/env bash
# DPT on T5-11B (google/t5-v1_1-xxl): ZeRO-3 over 2 nodes x 8 GPUs; checkpoints and requeues itself on preemption.
#
#   sbatch slurm/t5_11b_dpt.sh                                      # from the lrpt checkout
#   TASK=cb SEED=1 DATA_DIR=/data/superglue sbatch slurm/t5_11b_dpt.sh
#   sbatch --nodes=4 --time=48:00:00 slurm/t5_11b_dpt.sh --max_steps 30000   # sbatch flags; trainer flags
#
# Each setting below is a default: the same variable set in the environment you submit from wins
# (the full list: slurm/common.sh; docs/slurm.md). The run directory is runs/<job name>-<job id>
# unless OUTPUT_DIR is set; a requeued job keeps its id, finds its checkpoints there and resumes.
#SBATCH --job-name=t5_11b_dpt
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

LRPT_ROOT=${LRPT_ROOT:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}
[[ -f $LRPT_ROOT/slurm/common.sh ]] || { echo "submit from the lrpt checkout, or set LRPT_ROOT" >&2; exit 2; }
# shellcheck source=slurm/common.sh
source "$LRPT_ROOT/slurm/common.sh"

: "${MODEL:=google/t5-v1_1-xxl}"
: "${METHOD:=dpt}"
: "${TASK:=rte}"
: "${DEEPSPEED:=$LRPT_ROOT/ds_configs/zero3.json}"
: "${PRECISION:=bf16}"
# the papers' protocol (lrpt's own defaults are tuned for its small default backbone)
: "${PROMPT_LENGTH:=100}"
: "${LEARNING_RATE:=0.3}"
: "${NUM_TRAIN_EPOCHS:=10}"
: "${DECODING:=generate}"
: "${PER_DEVICE_TRAIN_BATCH_SIZE:=2}"
: "${SAVE_STEPS:=500}"
: "${OUTPUT_DIR:=runs/${SLURM_JOB_NAME:-t5_11b_dpt}-${SLURM_JOB_ID:-}}"

lrpt_train "$@"
