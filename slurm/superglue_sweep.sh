#!/usr/bin/env bash
# The SuperGLUE table as one job array: tasks x methods x seeds, one run (one GPU) per element.
# The last element to finish writes OUTPUT_DIR/table.md and table.csv (`lrpt table`).
#
#   sbatch slurm/superglue_sweep.sh                       # 8 tasks x 3 methods x 3 seeds = 72 runs
#   DATA_DIR=/data/superglue MODEL=google/t5-v1_1-base sbatch slurm/superglue_sweep.sh
#   RECIPE=dpt-t5-base DATA_DIR=/data/superglue sbatch slurm/superglue_sweep.sh  # DPT's Table 1 setting:
#                                                          # pt, residual, dpt on t5-base (lrpt.trainer.config.recipe)
#   TASKS="cb rte" METHODS="pt dpt" SEEDS="0 1" sbatch --array=0-7 slurm/superglue_sweep.sh
#   TASKS="cb rte" METHODS="pt dpt" SEEDS="0 1" bash slurm/superglue_sweep.sh   # prints the grid
#                                                          # and the --array to submit it with
#   FUSE=1 sbatch --array=0-7 --time=72:00:00 slurm/superglue_sweep.sh   # one element per task: its 9 runs
#                                                          # fused where the backbone allows (below)
#   FUSE=1 FUSE_MAX=3 sbatch --array=0-23 slurm/superglue_sweep.sh        # groups of at most 3 runs
# Another grid needs --array=0-(runs - 1). Every setting below is a default that the same
# variable in your environment overrides (slurm/common.sh lists them). Runs land in
# OUTPUT_DIR/<task>-<method>-seed<seed> (default OUTPUT_DIR: runs/superglue-<array job id>), the
# names `lrpt sweep` uses; a requeued element keeps its ids and resumes from its checkpoints.
# FUSE=1: an element trains a group of one task's runs together (`lrpt plan --fuse N` its memory;
# its --time the group's), each run in the same directory, with the same report, as unfused. A group that
# cannot share a pass (a backbone that trains with dropout, as T5 v1.1's config does) trains its runs one
# after another in its element, each as alone (`lrpt sweep --fuse auto`; the log says why).
#SBATCH --job-name=superglue
#SBATCH --array=0-71
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

LRPT_ROOT=${LRPT_ROOT:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}
[[ -f $LRPT_ROOT/slurm/common.sh ]] || { echo "submit from the lrpt checkout, or set LRPT_ROOT" >&2; exit 2; }
# shellcheck source=slurm/common.sh
source "$LRPT_ROOT/slurm/common.sh"
lrpt_grid_axes  # GRID, before the defaults below: a grid's variable is set per run

: "${TASKS:=boolq cb copa multirc record rte wic wsc}"
: "${SEEDS:=0 1 2}"
if [[ -n ${RECIPE:-} ]]; then
    # a paper's setting (lrpt.trainer.config.recipe): its backbone, protocol and methods, not this template's
    : "${METHODS:=$("$PYTHON" -m lrpt.trainer.config.recipe methods "$RECIPE")}"
else
    : "${METHODS:=pt dpt lamp}"
    : "${MODEL:=google/t5-v1_1-large}"
    : "${PRECISION:=bf16}"
    # the papers' protocol (lrpt's own defaults are tuned for its small default backbone)
    : "${PROMPT_LENGTH:=100}"
    : "${LEARNING_RATE:=0.3}"
    : "${NUM_TRAIN_EPOCHS:=10}"
    : "${DECODING:=generate}"
fi
: "${SAVE_STEPS:=1000}"
: "${OUTPUT_DIR:=runs/superglue-${SLURM_ARRAY_JOB_ID:-}}"
SWEEP_DIR=$OUTPUT_DIR
: "${FUSE:=0}"  # 1: each element trains a task's runs together, fused (lrpt sweep --fuse), at most FUSE_MAX of them
unset "${GRID_VARS[@]}"  # a grid's setting comes from its point, not from a default above

RUNS=()  # every run of the grid, by the names `lrpt sweep` gives them (seeds fastest, then the GRID's points)
lrpt_grid 0 "$TASKS" "$METHODS" "${GRID_LISTS[@]}" "$SEEDS"
for ((i = 0; i < GRID_SIZE; i++)); do
    lrpt_grid "$i" "$TASKS" "$METHODS" "${GRID_LISTS[@]}" "$SEEDS"
    lrpt_grid_name 2
    RUNS+=("${GRID_PICK[0]}-${GRID_PICK[1]}-seed${GRID_PICK[-1]}$GRID_NAME")
done
lrpt_fused_grid "$TASKS" "${#RUNS[@]}"
if ! lrpt_in_slurm; then
    lrpt_print_grid superglue_sweep.sh "tasks: $TASKS; methods: $METHODS; seeds: $SEEDS${GRID:+; grid: $GRID}"
    exit 0
fi

if [[ $FUSE == 1 ]]; then
    lrpt_check_array
    echo "lrpt: element $SLURM_ARRAY_TASK_ID of $GRID_SIZE: fused group $SLURM_ARRAY_TASK_ID (at most $FUSE_SIZE runs)"
    lrpt_sweep_fused --tasks "${TASKS// /,}" --methods "${METHODS// /,}" --seeds "${SEEDS// /,}" \
        ${GRID:+--grid $GRID} --output_dir "$SWEEP_DIR" --fuse auto --fuse_max "$FUSE_SIZE" \
        --fuse_group "$SLURM_ARRAY_TASK_ID" "$@"
else
    lrpt_grid "${SLURM_ARRAY_TASK_ID:?run it as a job array}" "$TASKS" "$METHODS" "${GRID_LISTS[@]}" "$SEEDS"
    lrpt_check_array
    TASK=${GRID_PICK[0]} METHOD=${GRID_PICK[1]} SEED=${GRID_PICK[-1]}
    lrpt_grid_export 2
    OUTPUT_DIR=$SWEEP_DIR/${RUNS[SLURM_ARRAY_TASK_ID]}
    echo "lrpt: element $SLURM_ARRAY_TASK_ID of $GRID_SIZE: $TASK $METHOD seed $SEED (${RUNS[SLURM_ARRAY_TASK_ID]})"
    lrpt_train "$@"
fi
lrpt_table_if_complete "$SWEEP_DIR" "${RUNS[@]}"
