# shellcheck shell=bash
# Sourced by every slurm/*.sh template; not a job on its own. See docs/slurm.md.
#
#  - rendezvous from Slurm's own variables: MASTER_ADDR is the job's first host
#    (`scontrol show hostnames $SLURM_JOB_NODELIST`), MASTER_PORT is derived from the job id, and
#    srun starts one task per GPU, whose RANK / LOCAL_RANK / WORLD_SIZE are SLURM_PROCID /
#    SLURM_LOCALID / SLURM_NTASKS (slurm/task.sh);
#  - the job's output goes to runs/slurm/<job name>-<job id>.log (LOG=path moves it, LOG=- keeps
#    it in Slurm's own output file); a requeued job appends to the same log;
#  - NCCL and thread defaults, each overridden by a value already in the environment;
#  - lrpt_train: runs the trainer under srun (a finished run it leaves as it is), forwards SIGUSR1 to it, and
#    requeues the job when the trainer stopped on the signal (checkpoint written, exit status 75;
#    a signal during loading kills the trainer before it listens: that job fails, unrequeued);
#    lrpt_sweep_fused does the same for one fused group of `lrpt sweep --fuse` (the sweeps' FUSE=1).
#
# Variables the templates read (all optional; a template sets its own defaults first):
#   LRPT_ROOT    the lrpt checkout (default: the directory sbatch was run from)
#   PYTHON       the interpreter that has lrpt installed (default: python3 on PATH at submit time)
#   VENV         a virtual environment to activate on the node first
#   every trainer flag, as its name upper-cased: MODEL METHOD TASK DATA_DIR DEEPSPEED OUTPUT_DIR SEED
#                PRECISION PROMPT_LENGTH PER_DEVICE_TRAIN_BATCH_SIZE MAX_STEPS NUM_TRAIN_EPOCHS POOL ...,
#                and CONFIG for --config; PROMPT_RANK is --rank (RANK is the process rank). The list
#                comes from lrpt itself (`python -m lrpt.trainer.config.slurm_env`), method options included.
#                Old spellings still work: BATCH_SIZE DS_CONFIG EPOCHS GRAD_ACCUM
#   EXTRA_ARGS   any other trainer flags, split on spaces; the script's own arguments are added last
#   GRID         the sweeps' grid over any trainer setting, as `lrpt sweep --grid` takes it:
#                GRID="learning_rate=0.3,0.1 rank=4,10" (each point a run; its variable is then not set)
#   SRUN_WAIT    seconds the other ranks get once one rank has ended, before srun ends them (300)

if [[ -n ${VENV:-} ]]; then
    # shellcheck source=/dev/null
    source "$VENV/bin/activate"
fi
PYTHON=${PYTHON:-python3}
PREEMPTED=75      # trainer/runtime/preempt.py EXIT_CODE: checkpoint written on SIGUSR1, run not finished
KILLED_BY_USR1=138  # 128 + SIGUSR1: the signal came before the trainer listened for it (while loading)

# ---- the job, its rendezvous, its log ---------------------------------------------------------
if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
    JOB_TAG=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
else
    JOB_TAG=${SLURM_JOB_ID:-}
fi

lrpt_in_slurm() {
    [[ -n ${SLURM_JOB_ID:-} ]]
}

if lrpt_in_slurm; then
    mapfile -t LRPT_HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    export MASTER_ADDR=${LRPT_HOSTS[0]}
    export MASTER_PORT=$((10000 + SLURM_JOB_ID % 20000))  # below the ephemeral range; distinct per job
    # since Slurm 22.05 srun does not inherit sbatch's --cpus-per-task; pass it on
    if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
        export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
    fi
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank ends the job
    # NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_IB_DISABLE, ...: set them in the environment you submit from

    LOG=${LOG:-runs/slurm/${SLURM_JOB_NAME}-${JOB_TAG}.log}
    if [[ $LOG != - ]]; then
        mkdir -p "$(dirname "$LOG")"
        echo "lrpt: job $SLURM_JOB_ID (${JOB_TAG}) logs to $LOG"
        exec >>"$LOG" 2>&1
    fi
    echo "==== $(date '+%F %T') job ${JOB_TAG} on ${SLURM_JOB_NODELIST}: ${SLURM_NTASKS:-?} ranks," \
         "rendezvous ${MASTER_ADDR}:${MASTER_PORT}, restart ${SLURM_RESTART_COUNT:-0}"
fi

# ---- the trainer's flags from the environment ---------------------------------------------------
lrpt_alias() {  # lrpt_alias OLD NEW: a value under an old name fills the new one; both set and different: an error
    local old=$1 new=$2
    [[ -n ${!old:-} ]] || return 0
    if [[ -n ${!new:-} && ${!new} != "${!old}" ]]; then
        echo "lrpt: $old=${!old} and $new=${!new} disagree: $old is the old name of $new; set only $new" >&2
        exit 2
    fi
    printf -v "$new" '%s' "${!old}"
}
# trainer/config/slurm_env.py ALIASES; before the template's defaults, so that a value you set wins over them
lrpt_alias BATCH_SIZE PER_DEVICE_TRAIN_BATCH_SIZE
lrpt_alias DS_CONFIG DEEPSPEED
lrpt_alias EPOCHS NUM_TRAIN_EPOCHS
lrpt_alias GRAD_ACCUM GRADIENT_ACCUMULATION_STEPS

lrpt_flags() {  # fills the array LRPT_FLAGS: a flag for every set variable that names a trainer setting
    local names var field extra
    if ! names=$("$PYTHON" -m lrpt.trainer.config.slurm_env); then
        echo "lrpt: $PYTHON cannot import lrpt: pip install -e $LRPT_ROOT there, or set PYTHON or VENV" >&2
        exit 2
    fi
    LRPT_FLAGS=()
    while IFS=$'\t' read -r var field; do
        if [[ -n ${!var:-} ]]; then
            LRPT_FLAGS+=("--$field" "${!var}")
        fi
    done <<<"$names"
    read -ra extra <<<"${EXTRA_ARGS:-}"
    LRPT_FLAGS+=("${extra[@]}")
}

# ---- one run (or one fused group): train, or stop on SIGUSR1 and requeue --------------------------
lrpt_require_slurm() {
    if ! lrpt_in_slurm; then
        echo "lrpt: $0 is a Slurm batch script: submit it with sbatch (docs/slurm.md)" >&2
        exit 2
    fi
}

lrpt_train() {  # lrpt_train [TRAINER FLAGS...]; OUTPUT_DIR must be set
    lrpt_require_slurm
    : "${OUTPUT_DIR:?OUTPUT_DIR must be set}"
    # a finished OUTPUT_DIR is the trainer's to judge: unchanged it exits 0 touching nothing, with
    # other settings it refuses (the run directory's config is its contract)
    lrpt_flags
    LRPT_FLAGS+=("$@")
    if [[ -f $OUTPUT_DIR/checkpoints/latest ]]; then
        echo "lrpt: resuming $OUTPUT_DIR from checkpoints/$(cat "$OUTPUT_DIR/checkpoints/latest")"
    fi
    lrpt_srun "$OUTPUT_DIR/report.json" "${LRPT_FLAGS[@]}"
}

lrpt_sweep_fused() {  # lrpt_sweep_fused [lrpt sweep FLAGS...]: one fused group of `lrpt sweep --fuse` (FUSE=1)
    # every run of the group resumes from its own checkpoints, a finished one is skipped (lrpt sweep's rules);
    # the flags from the environment go to every run, so none may name one run (TASK, METHOD, SEED, ...)
    local var
    lrpt_require_slurm
    for var in TASK METHOD SEED FEW_SHOT; do
        if [[ -n ${!var:-} ]]; then
            echo "lrpt: FUSE=1 trains every run of the grid's lists: unset $var (set TASKS, METHODS, SEEDS, SHOTS)" >&2
            exit 2
        fi
    done
    OUTPUT_DIR='' lrpt_flags
    lrpt_srun "" sweep "$@" "${LRPT_FLAGS[@]}"
}

lrpt_srun() {  # lrpt_srun REPORT|"" TRAINER ARGS...: trainer/run.py under srun, SIGUSR1 passed on, requeue on 75.
               # Finished: exit status 0 (and REPORT exists, if named).
    local report=$1
    shift
    echo "lrpt: $PYTHON trainer/run.py $*"

    # `scancel --signal=USR1 --batch` reaches this shell only: pass it on to the step (srun
    # forwards it to every task). `--signal=USR1@N` signals the tasks directly.
    local signaled=0 pid='' status=0
    trap 'signaled=1; echo "lrpt: SIGUSR1: asking the trainer to checkpoint and stop"; [[ -z $pid ]] || kill -USR1 "$pid" 2>/dev/null || true' USR1
    srun --kill-on-bad-exit=0 --wait="${SRUN_WAIT:-300}" \
        "$LRPT_ROOT/slurm/task.sh" "$PYTHON" "$LRPT_ROOT/trainer/run.py" "$@" &
    pid=$!
    if (( signaled )); then
        kill -USR1 "$pid" 2>/dev/null || true
    fi
    while kill -0 "$pid" 2>/dev/null; do
        wait "$pid" || true  # a trapped signal interrupts wait; wait again until srun has ended
    done
    wait "$pid" || status=$?
    trap - USR1

    if (( status == 0 )) && [[ -z $report || -f $report ]]; then
        echo "lrpt: finished${report:+: $report}"
        return 0
    fi
    if (( status == PREEMPTED )); then
        lrpt_requeue
    fi
    if (( status == KILLED_BY_USR1 || (signaled && status != 0) )); then
        # not requeued: it made no progress, and a job whose --time is shorter than its
        # --signal=USR1@N lead would be signaled at every start and requeued forever
        echo "lrpt: SIGUSR1 came before training began (is --time shorter than the --signal lead?);" \
             "not requeued. Resubmit with OUTPUT_DIR=$OUTPUT_DIR to resume" >&2
    fi
    echo "lrpt: the trainer failed (exit status $status)" >&2
    exit "$(( status ? status : 1 ))"
}

lrpt_requeue() {
    echo "lrpt: preempted; requeueing job $SLURM_JOB_ID: it resumes from $OUTPUT_DIR/checkpoints"
    if scontrol requeue "$SLURM_JOB_ID"; then
        exit 0
    fi
    echo "lrpt: scontrol requeue failed; resubmit with OUTPUT_DIR=$OUTPUT_DIR to resume" >&2
    exit "$PREEMPTED"
}

# ---- job arrays ---------------------------------------------------------------------------------
lrpt_grid() {  # lrpt_grid INDEX "LIST" "LIST"...: the INDEX-th combination (first list slowest) in
               # the array GRID_PICK, the number of combinations in GRID_SIZE
    local index=$1 list stride
    local -a words
    shift
    GRID_SIZE=1
    for list in "$@"; do
        read -ra words <<<"$list"
        GRID_SIZE=$((GRID_SIZE * ${#words[@]}))
    done
    GRID_PICK=()
    stride=$GRID_SIZE
    for list in "$@"; do
        read -ra words <<<"$list"
        stride=$((stride / ${#words[@]}))
        GRID_PICK+=("${words[index / stride % ${#words[@]}]}")
    done
}

lrpt_grid_axes() {  # GRID="FIELD=V1,V2 FIELD=V1,V2" (lrpt sweep --grid's grammar) into GRID_FIELDS, GRID_VARS
                    # (their variables), GRID_LISTS (space-separated values) and GRID_SHARED (fields a fused group
                    # shares); call it before the template's defaults, which then must not set a grid's variable
    local axes field var per_run values
    local -a items
    GRID_FIELDS=() GRID_VARS=() GRID_LISTS=() GRID_SHARED=()
    [[ -n ${GRID:-} ]] || return 0
    read -ra items <<<"$GRID"
    axes=$("$PYTHON" -m lrpt.trainer.config.grid "${items[@]}") || exit 2
    while IFS=$'\t' read -r field var per_run values; do
        if [[ -n ${!var:-} ]]; then
            echo "lrpt: GRID names $field, and $var=${!var} sets it for every run: give it once" >&2
            exit 2
        fi
        GRID_FIELDS+=("$field") GRID_VARS+=("$var") GRID_LISTS+=("$values")
        [[ $per_run == 1 ]] || GRID_SHARED+=("$field")
    done <<<"$axes"
}

lrpt_grid_name() {  # lrpt_grid_name FIRST: the run name's grid part from GRID_PICK[FIRST...] (lrpt sweep's names)
    local j
    GRID_NAME=""
    for ((j = 0; j < ${#GRID_FIELDS[@]}; j++)); do
        GRID_NAME+="-${GRID_FIELDS[j]}${GRID_PICK[$1 + j]}"
    done
}

lrpt_grid_export() {  # lrpt_grid_export FIRST: each grid variable set to its value in GRID_PICK[FIRST...]
    local j
    for ((j = 0; j < ${#GRID_FIELDS[@]}; j++)); do
        printf -v "${GRID_VARS[j]}" '%s' "${GRID_PICK[$1 + j]}"
    done
}

lrpt_fused_grid() {  # lrpt_fused_grid TASKS RUNS: with FUSE=1 the grid is one element per fused group of at most
                     # FUSE_MAX runs of one task (default: all of a task's): GRID_SIZE elements, FUSE_SIZE runs each
    local -a tasks
    [[ ${FUSE:=0} == 0 ]] && return 0
    if [[ $FUSE != 1 ]]; then
        echo "lrpt: FUSE=$FUSE: set FUSE=1 (fused groups) or FUSE=0" >&2
        exit 2
    fi
    if (( ${#GRID_SHARED[@]} )); then
        echo "lrpt: FUSE=1 trains a group per task, and GRID varies ${GRID_SHARED[*]}, which fused runs share:" \
             "its points would need groups of their own; use FUSE=0 for this grid" >&2
        exit 2
    fi
    read -ra tasks <<<"$1"
    local per_task=$(($2 / ${#tasks[@]}))
    FUSE_SIZE=${FUSE_MAX:-$per_task}
    if ! [[ $FUSE_SIZE =~ ^[1-9][0-9]*$ ]]; then
        echo "lrpt: FUSE_MAX=$FUSE_SIZE: give a number of runs, 1 or more" >&2
        exit 2
    fi
    GRID_SIZE=$(( ${#tasks[@]} * ((per_task + FUSE_SIZE - 1) / FUSE_SIZE) ))
}

lrpt_print_grid() {  # lrpt_print_grid SCRIPT "WHAT": outside Slurm, the grid and the --array that covers it
    echo "grid: ${#RUNS[@]} runs ($2)"
    if [[ $FUSE == 1 ]]; then
        echo "fused: $GRID_SIZE elements, each a group of at most $FUSE_SIZE runs of one task"
    fi
    echo "submit: sbatch --array=0-$((GRID_SIZE - 1)) slurm/$1"
}

lrpt_check_array() {  # after lrpt_grid: the array must index the grid
    if (( SLURM_ARRAY_TASK_ID >= GRID_SIZE )); then
        echo "lrpt: array index $SLURM_ARRAY_TASK_ID is outside the grid of $GRID_SIZE runs:" \
             "submit with sbatch --array=0-$((GRID_SIZE - 1))" >&2
        exit 2
    fi
    if (( ${SLURM_ARRAY_TASK_MAX:-0} < GRID_SIZE - 1 )); then
        echo "lrpt: warning: the array (up to ${SLURM_ARRAY_TASK_MAX:-?}) does not cover the grid of" \
             "$GRID_SIZE runs (--array=0-$((GRID_SIZE - 1)))" >&2
    fi
}

lrpt_table_if_complete() {  # lrpt_table_if_complete DIR RUN_NAME...: write DIR/table.{md,csv} once all ran
    local dir=$1 name
    shift
    for name in "$@"; do
        [[ -f $dir/$name/report.json ]] || return 0
    done
    echo "lrpt: every run of the grid is finished; writing $dir/table.md"
    # a GRID's points get a row each, as `lrpt sweep --grid` writes its table
    "$PYTHON" -m lrpt.trainer.cli.main table "${@/#/$dir/}" --output "$dir/table" \
        ${GRID_FIELDS[@]:+--by "${GRID_FIELDS[@]}"} || echo "lrpt: lrpt table failed (the runs are intact)" >&2
}
