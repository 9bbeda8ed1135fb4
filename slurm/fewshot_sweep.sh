#!/usr/bin/env bash
# A few-shot table as one job array: tasks x methods x K in {8, 16, 32} x seeds, one run (one GPU)
# per element; K training rows are drawn by (task, K, seed) alone. The last element to finish
# writes OUTPUT_DIR/table.md and table.csv (`lrpt table`).
#
#   sbatch slurm/fewshot_sweep.sh                         # 8 tasks x lamp x 3 K x 3 seeds = 72 runs
#   METHODS="pt dpt lamp" sbatch --array=0-215 slurm/fewshot_sweep.sh
#   TASKS="cb rte" SHOTS="8 16" SEEDS="0 1" bash slurm/fewshot_sweep.sh   # prints the grid and
#                                                          # the --array to submit it with
# Another grid needs --array=0-(runs - 1). Every setting below is a default that the same
# variable in your environment overrides (slurm/common.sh lists them). Runs land in
# OUTPUT_DIR/<task>-<method>-seed<seed>-k<K> (default OUTPUT_DIR: runs/fewshot-<array job id>),
# the names `lrpt sweep` uses; a requeued element keeps its ids and resumes from its checkpoints.
#SBATCH --job-name=fewshot
#SBATCH --array=0-71
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=04:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

LRPT_ROOT=${LRPT_ROOT:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}
[[ -f $LRPT_ROOT/slurm/common.sh ]] || { echo "submit from the lrpt checkout, or set LRPT_ROOT" >&2; exit 2; }
# shellcheck source=slurm/common.sh
source "$LRPT_ROOT/slurm/common.sh"

: "${TASKS:=boolq cb copa multirc record rte wic wsc}"
: "${SHOTS:=8 16 32}"
: "${SEEDS:=0 1 2}"
if [[ -n ${RECIPE:-} ]]; then
    # a paper's setting (lrpt.trainer.recipe): its backbone, protocol and methods, not this template's
    : "${METHODS:=$("$PYTHON" -m lrpt.trainer.recipe methods "$RECIPE")}"
else
    : "${METHODS:=lamp}"
    : "${MODEL:=google/t5-v1_1-large}"
    : "${PRECISION:=bf16}"
fi
: "${SAVE_STEPS:=200}"
: "${OUTPUT_DIR:=runs/fewshot-${SLURM_ARRAY_JOB_ID:-}}"
SWEEP_DIR=$OUTPUT_DIR

lrpt_grid 0 "$TASKS" "$METHODS" "$SHOTS" "$SEEDS"
if ! lrpt_in_slurm; then
    echo "grid: $GRID_SIZE runs (tasks: $TASKS; methods: $METHODS; K: $SHOTS; seeds: $SEEDS)"
    echo "submit: sbatch --array=0-$((GRID_SIZE - 1)) slurm/fewshot_sweep.sh"
    exit 0
fi

RUNS=()
for ((i = 0; i < GRID_SIZE; i++)); do
    lrpt_grid "$i" "$TASKS" "$METHODS" "$SHOTS" "$SEEDS"
    RUNS+=("${GRID_PICK[0]}-${GRID_PICK[1]}-seed${GRID_PICK[3]}-k${GRID_PICK[2]}")
done
lrpt_grid "${SLURM_ARRAY_TASK_ID:?run it as a job array}" "$TASKS" "$METHODS" "$SHOTS" "$SEEDS"
lrpt_check_array
TASK=${GRID_PICK[0]} METHOD=${GRID_PICK[1]} FEW_SHOT=${GRID_PICK[2]} SEED=${GRID_PICK[3]}
OUTPUT_DIR=$SWEEP_DIR/${RUNS[SLURM_ARRAY_TASK_ID]}
echo "lrpt: element $SLURM_ARRAY_TASK_ID of $GRID_SIZE: $TASK $METHOD K=$FEW_SHOT seed $SEED"

lrpt_train "$@"
lrpt_table_if_complete "$SWEEP_DIR" "${RUNS[@]}"
