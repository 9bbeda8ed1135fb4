"""slurm/*.sh on a real Slurm cluster (tests/slurm_cluster.sh: two nodes on one machine, CPU ranks): ZeRO-3
jobs that complete on one node and across two, a SuperGLUE job array and its table, and preemption: SIGUSR1,
checkpoint, requeue, resume to the same losses and prompt as an uninterrupted run (on one node and on two); a
finished run is never trained again. Every other template is submitted once, on its own defaults (tiny backbone,
CPU, a few steps): t5_11b_dpt.sh, t5_11b_pt.sh (two nodes), llama_7b_dpt.sh (tiny LLaMA), a fewshot_sweep.sh array.

The cluster tests skip only when `sbatch` is not on PATH; CI (.ci/run) installs and starts Slurm.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launch import ROOT, clean_env
from lrpt.trainer.rundir import checkpoint
from lrpt.trainer.runtime import preempt
from lrpt.trainer.config import slurm_env
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.train.loop import train

SCRIPTS = sorted((ROOT / "slurm").glob("*.sh")) + [ROOT / "tests" / "slurm_cluster.sh"]
needs_slurm = pytest.mark.skipif(shutil.which("sbatch") is None, reason="Slurm is not installed (no sbatch on PATH)")
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
        "PREEMPTED"}
# What the templates read (every RunConfig field's variable, the old spellings, the grids' lists and
# common.sh's own); the tests set them explicitly, so none may leak in from the caller.
TEMPLATE_VARS = {*slurm_env.variables(), *slurm_env.ALIASES, "EXTRA_ARGS", "TASKS", "METHODS", "SEEDS", "SHOTS",
                 "GRID", "FUSE", "FUSE_MAX", "LOG", "VENV", "SRUN_WAIT"}
# tiny T5, 2 CPU ranks on one node, ZeRO-3 (the template's own DEEPSPEED)
TINY = {"PRECISION": "fp32", "PROMPT_LENGTH": "8", "PER_DEVICE_TRAIN_BATCH_SIZE": "2", "MAX_STEPS": "60",
        "SAVE_STEPS": "5", "SEED": "5", "MAX_EVAL_SAMPLES": "4", "DECODING": "rank", "PROGRESS": "false"}
CPU_JOB = ["--nodes=1", "--gpus-per-node=0", "--time=30"]  # > the templates' USR1@600 lead
# the command: one CPU rank on each of two nodes (tests/slurm_cluster.sh's node1 and node2)
TWO_NODE_JOB = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--time=30"]


# ---- static checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    done = subprocess.run(["shellcheck", "-x", *[str(p.relative_to(ROOT)) for p in SCRIPTS]], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_templates_ask_for_gpus_per_node_only_and_for_requeue():
    for script in (ROOT / "slurm").glob("*.sh"):
        text = script.read_text()
        if "#SBATCH" not in text:
            continue
        assert "#SBATCH --gpus-per-node=" in text and "#SBATCH --requeue" in text, script.name
        assert re.search(r"#SBATCH --signal=USR1@\d+", text), script.name
        assert not re.search(r"#SBATCH --(gres|gpus|gpus-per-task|cpus-per-gpu|mem-per-gpu)[= ]", text), script.name


def template_defaults(script: Path) -> dict[str, str]:
    """The template's own defaults (`: "${VAR:=value}"`) and its #SBATCH node and GPU counts."""
    text = script.read_text()
    found = dict(re.findall(r'^\s*: "\$\{(\w+):=([^}]*)\}"$', text, re.M))
    found.update(re.findall(r"^#SBATCH --(nodes|gpus-per-node)=(\d+)$", text, re.M))
    return found


def documented_plans() -> dict[str, list[str]]:
    """docs/slurm.md's `lrpt plan ...  # template.sh` lines: template -> the plan's arguments."""
    lines = re.findall(r"^lrpt plan (.+?)\s+# (\w+\.sh)$", (ROOT / "docs" / "slurm.md").read_text(), re.M)
    return {script: args.split() for args, script in lines}


def test_each_template_has_an_offline_plan_of_its_own_default_job():
    """The plan docs/slurm.md gives for a template is of the model, method, ZeRO stage, precision, batch and
    GPUs the template launches, and it runs without network (the names are known architectures)."""
    templates = {p.name: template_defaults(p) for p in (ROOT / "slurm").glob("*.sh") if "MODEL:=" in p.read_text()}
    plans = documented_plans()
    assert sorted(plans) == sorted(templates)
    commands = []
    for script, job in templates.items():
        args = plans[script]
        flags = dict(zip(args[::2], args[1::2]))
        zero = re.search(r"zero(\d)\.json", job.get("DEEPSPEED", "zero0.json")).group(1)
        method = job.get("METHOD") or job["METHODS"].split()[-1]  # a sweep: its last (most expensive) method
        want = {"--model": job["MODEL"], "--method": method, "--zero": zero, "--precision": job["PRECISION"],
                "--gpus": job["gpus-per-node"], "--nodes": job["nodes"],
                "--per_device_train_batch_size": job.get("PER_DEVICE_TRAIN_BATCH_SIZE", "8"),
                "--prompt_length": job["PROMPT_LENGTH"]}
        assert {k: flags.get(k, {"--nodes": "1", "--per_device_train_batch_size": "8"}.get(k)) for k in want} == want
        commands.append(args)
    code = ("import sys, json; from lrpt.trainer.cli.main import main; "
            "sys.exit(max(main(['plan', *a, '--json']) for a in json.loads(sys.argv[1])))")
    env = {**clean_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent/hf"}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: planned, and it does not fit
    assert done.stdout.count('"peak"') == len(commands), done.stdout[-3000:]


def grid_plan(script: str, env: dict) -> str:
    """What a sweep prints when run outside Slurm: its grid and the sbatch --array that covers it."""
    return subprocess.run(["bash", str(ROOT / "slurm" / script)], env={**job_env(), **env}, capture_output=True,
                          text=True, check=True).stdout


def test_sweeps_print_their_grid_outside_slurm():
    env = {"TASKS": "cb rte", "METHODS": "pt dpt", "SEEDS": "0 1 2"}
    assert "grid: 12 runs" in grid_plan("superglue_sweep.sh", env)
    assert "sbatch --array=0-11 slurm/superglue_sweep.sh" in grid_plan("superglue_sweep.sh", env)
    assert "grid: 72 runs" in grid_plan("fewshot_sweep.sh", {})  # 8 tasks x lamp x K in {8,16,32} x 3 seeds
    # a recipe brings its methods (DPT's Table 1: pt, residual, dpt), not the template's
    with_recipe = grid_plan("superglue_sweep.sh", {"TASKS": "cb rte", "SEEDS": "0", "RECIPE": "dpt-t5-base",
                                                   "PYTHON": sys.executable})
    assert "grid: 6 runs (tasks: cb rte; methods: dpt residual pt; seeds: 0)" in with_recipe, with_recipe
    # FUSE=1: an element per group of at most FUSE_MAX runs of one task, as many as `lrpt sweep --fuse` makes
    from lrpt.trainer.cli.sweep import fuse_groups
    from lrpt.trainer.config.run_config import RunConfig

    runs = [RunConfig(task=t, method=m, seed=s) for t in ("cb", "rte") for m in ("pt", "dpt") for s in range(3)]
    for most, elements in (("", 2), ("4", 4), ("1", 12)):
        fused = grid_plan("superglue_sweep.sh", {**env, "FUSE": "1", "FUSE_MAX": most})
        assert len(fuse_groups(runs, int(most) if most else None)) == elements
        assert f"fused: {elements} elements" in fused and f"--array=0-{elements - 1} " in fused, fused
    shots = grid_plan("fewshot_sweep.sh", {"TASKS": "cb rte", "SHOTS": "8 16", "SEEDS": "0 1 2", "FUSE": "1",
                                          "FUSE_MAX": "4"})
    assert "grid: 12 runs" in shots and "fused: 4 elements" in shots, shots  # 6 runs a task: groups of 4 and 2
    # every index names a different combination, first list slowest
    script = f'source "{ROOT}/slurm/common.sh"; for i in $(seq 0 11); do lrpt_grid "$i" "a b" "x y z" "0 1"; ' \
             'echo "${GRID_PICK[*]}"; done; echo "$GRID_SIZE"'
    lines = subprocess.run(["bash", "-c", script], env=job_env(), capture_output=True, text=True,
                           check=True).stdout.split("\n")
    assert lines[:12] == [f"{a} {x} {s}" for a in "ab" for x in "xyz" for s in "01"] and lines[12] == "12"


# ---- the trainer's side of preemption, no Slurm needed ---------------------------------------------

def test_sigusr1_checkpoints_exits_75_and_resumes_to_the_same_prompt(tiny_t5_dir, memorise_dir, tmp_path,
                                                                    monkeypatch):
    def cfg(out):
        return RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(out), method="lamp",
                         prompt_length=8, per_device_train_batch_size=2, max_steps=8, save_steps=0,
                         warmup_ratio=0.25, progress=False, seed=3)

    straight = train(cfg(tmp_path / "straight")).report
    real, calls = preempt.stop_requested, []

    def signal_at_step_5():  # the signal arrives during step 5, as Slurm's would
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real()

    monkeypatch.setattr(preempt, "stop_requested", signal_at_step_5)
    with pytest.raises(SystemExit) as stopped:
        train(cfg(tmp_path / "preempted"))
    assert stopped.value.code == preempt.EXIT_CODE == 75
    assert checkpoint.latest(tmp_path / "preempted").name == "step-000005"
    assert not (tmp_path / "preempted" / "report.json").exists()
    monkeypatch.setattr(preempt, "stop_requested", real)

    resumed = train(cfg(tmp_path / "preempted")).report
    torch.testing.assert_close(resumed.train.loss_curve, straight.train.loss_curve, rtol=1e-6, atol=1e-6)
    assert_same_prompt(tmp_path / "preempted", tmp_path / "straight")


def assert_same_prompt(run: Path, reference: Path) -> None:
    got, want = load_file(run / "prompt.safetensors"), load_file(reference / "prompt.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


# ---- on the cluster ---------------------------------------------------------------------------------

def job_env() -> dict[str, str]:
    env = {k: v for k, v in clean_env().items()
           if k not in TEMPLATE_VARS and not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(LRPT_ROOT=str(ROOT), PYTHON=sys.executable)
    return env


class Cluster:
    def __init__(self):
        self.submitted: list[str] = []

    def sbatch(self, script: str, cwd: Path, env: dict, flags: list[str], args: list[str] = ()) -> str:
        done = subprocess.run(["sbatch", "--parsable", f"--output={cwd}/slurm-%j.out", *flags,
                               str(ROOT / "slurm" / script), *args],
                              cwd=cwd, env={**job_env(), **env}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        job = done.stdout.strip().split(";")[0]
        self.submitted.append(job)
        return job

    @staticmethod
    def jobs(job: str) -> list[dict[str, str]]:
        """`scontrol show job` as dicts: one per job, or per element of an array."""
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=True)
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in shown.stdout.splitlines() if line.strip()]

    def wait(self, job: str, timeout: float = 480, count: int = 1) -> list[dict[str, str]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            jobs = self.jobs(job)
            if len(jobs) == count and all(j["JobState"] in DONE for j in jobs):
                return jobs
            time.sleep(1)
        raise AssertionError(f"job {job} did not end in {timeout} s: {self.jobs(job)}")


def log_of(cwd: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((cwd / "runs" / "slurm").glob("*.log")))


def our_cluster() -> bool:
    """Whether this machine's Slurm is tests/slurm_cluster.sh's: then the script runs (it returns at once when
    the cluster is up on its configuration), so that a cluster an older version of it started is brought up to
    date; a real cluster's is used as it is."""
    conf = Path("/etc/slurm/slurm.conf")
    return conf.is_file() and "# Written by tests/slurm_cluster.sh" in conf.read_text()


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed (no sbatch on PATH)")
    if our_cluster() or subprocess.run(["sinfo"], capture_output=True).returncode != 0:  # or no controller answers
        started = subprocess.run(["bash", str(ROOT / "tests" / "slurm_cluster.sh")], capture_output=True, text=True)
        assert started.returncode == 0, started.stdout + started.stderr
    c = Cluster()
    yield c
    if c.submitted:
        subprocess.run(["scancel", *c.submitted], capture_output=True)


@pytest.fixture(scope="module")
def lamp_job(cluster, tiny_t5_dir, tmp_path_factory):
    """`sbatch slurm/t5_11b_lamp.sh`, overridden: tiny T5, 2 ranks on 1 node, CPU, ZeRO-3; runs straight through."""
    cwd = tmp_path_factory.mktemp("lamp")
    job = cluster.sbatch("t5_11b_lamp.sh", cwd, {**TINY, "MODEL": tiny_t5_dir}, [*CPU_JOB, "--ntasks-per-node=2"])
    (state,) = cluster.wait(job)
    return job, cwd, state


@needs_slurm
def test_t5_11b_lamp_job_completes_with_a_report(lamp_job):
    job, cwd, state = lamp_job
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log_of(cwd)[-4000:]
    run = cwd / "runs" / f"t5_11b_lamp-{job}"  # the template's default OUTPUT_DIR
    report = json.loads((run / "report.json").read_text())
    assert report["method"] == "lamp" and report["world_size"] == 2 and report["zero_stage"] == 3
    assert report["train"]["steps"] == 60
    log = log_of(cwd)
    assert f"rendezvous {state['BatchHost']}:" in log and "2 ranks" in log


@needs_slurm
def test_requeue_of_a_finished_job_trains_nothing(cluster, lamp_job):
    job, cwd, _ = lamp_job
    report = cwd / "runs" / f"t5_11b_lamp-{job}" / "report.json"
    before = report.stat().st_mtime_ns
    subprocess.run(["scontrol", "requeue", job], check=True)
    deadline = time.time() + 120
    while "nothing to run" not in log_of(cwd) and time.time() < deadline:
        time.sleep(1)
    (state,) = cluster.wait(job)
    assert state["JobState"] == "COMPLETED" and int(state["Restarts"]) >= 1, state
    assert "is finished (report.json): nothing to run" in log_of(cwd)
    assert report.stat().st_mtime_ns == before


def saved_step(run: Path) -> int:
    """The step of the run's latest checkpoint, -1 before the first."""
    latest = run / "checkpoints" / "latest"
    return int(latest.read_text().split("-")[-1]) if latest.exists() else -1


def wait_for(condition, what: str, cwd: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.1)
    assert condition(), f"{what}, in {timeout} s:\n" + log_of(cwd)[-4000:]


@needs_slurm
def test_usr1_checkpoints_requeues_and_resumes_to_the_same_prompt(cluster, lamp_job, tiny_t5_dir, tmp_path):
    """Interrupted three times: the batch shell gets SIGUSR1 (`scancel --signal=USR1 --batch`) and
    forwards it; then the ranks get it directly, as from the templates' `--signal=USR1@600`; then
    `scontrol requeue` kills the job outright (SIGTERM, as a preemption without the signal does),
    and it resumes from its last periodic checkpoint."""
    reference_job, reference_cwd, _ = lamp_job
    job = cluster.sbatch("t5_11b_lamp.sh", tmp_path, {**TINY, "MODEL": tiny_t5_dir},
                         [*CPU_JOB, "--ntasks-per-node=2"])
    run = tmp_path / "runs" / f"t5_11b_lamp-{job}"
    wait_for(lambda: saved_step(run) > 0, "no checkpoint", tmp_path)  # training is under way
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    wait_for(lambda: "resumed from" in log_of(tmp_path), "not resumed", tmp_path)
    first_stop = int(re.search(r"resumed from \S+ at step (\d+)", log_of(tmp_path)).group(1))
    wait_for(lambda: saved_step(run) > first_stop, "no checkpoint after resuming", tmp_path)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # the job's steps, not its batch shell
    wait_for(lambda: log_of(tmp_path).count("resumed from") == 2, "not resumed twice", tmp_path)
    second_stop = int(re.findall(r"resumed from \S+ at step (\d+)", log_of(tmp_path))[-1])
    wait_for(lambda: saved_step(run) > second_stop, "no checkpoint after resuming twice", tmp_path)
    subprocess.run(["scontrol", "requeue", job], check=True)

    (state,) = cluster.wait(job)
    log = log_of(tmp_path)
    assert state["JobState"] == "COMPLETED" and int(state["Restarts"]) == 3, (state, log[-4000:])
    stops = [int(n) for n in re.findall(r"SIGUSR1: checkpoint of step (\d+) written", log)]
    resumes = [int(n) for n in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert len(stops) == 2 and resumes[:2] == stops and 0 < stops[0] < stops[1], log[-4000:]
    assert len(resumes) == 3 and stops[1] < resumes[2] < 60 and resumes[2] % 5 == 0, log[-4000:]
    assert log.count("requeueing job") == 2

    reference = reference_cwd / "runs" / f"t5_11b_lamp-{reference_job}"
    got, want = (json.loads((d / "report.json").read_text()) for d in (run, reference))
    torch.testing.assert_close(got["train"]["loss_curve"], want["train"]["loss_curve"], rtol=1e-5, atol=1e-5)
    assert got["metrics"] == want["metrics"]
    assert_same_prompt(run, reference)


# ---- two nodes ----------------------------------------------------------------------------------

START = re.compile(r"^==== .* job \S+ on (\S+): (\d+) ranks, rendezvous ([^\s:]+):\d+, restart \d+$", re.M)
RANK_ON = re.compile(r"^lrpt: rank (\d+) of \d+ \(local rank \d+\) on (\S+)$", re.M)


def hostnames(nodelist: str) -> list[str]:
    """A Slurm node list (node[1-2]) as names, in the order Slurm hands out ranks and common.sh picks MASTER_ADDR."""
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                          check=True).stdout.split()


def starts_of(log: str) -> list[tuple[list[str], str, dict[int, str]]]:
    """Each (re)start of a job's trainer in its log: the job's nodes, the rendezvous host, and the node each
    rank said it runs on (slurm/task.sh)."""
    heads = list(START.finditer(log))
    ends = [h.start() for h in heads[1:]] + [len(log)]
    return [(hostnames(h.group(1)), h.group(3), {int(r): n for r, n in RANK_ON.findall(log, h.end(), end)})
            for h, end in zip(heads, ends)]


def assert_ran_across_two_nodes(log: str, starts: int) -> None:
    """Every start: two distinct nodes, rank i on the i-th (srun's block distribution), rendezvous at the
    first node's name."""
    found = starts_of(log)
    assert len(found) == starts, log[-4000:]
    for nodes, master, ranks in found:
        assert len(set(nodes)) == 2 and ranks == dict(enumerate(nodes)), (nodes, ranks, log[-4000:])
        assert master == nodes[0], (master, nodes)


@pytest.fixture(scope="module")
def twonode_job(cluster, tiny_t5_dir, tmp_path_factory):
    """`sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=0 slurm/t5_11b_lamp.sh`: tiny T5, ZeRO-3, one CPU
    rank per node; runs straight through, and is the reference for the interrupted two-node job."""
    cwd = tmp_path_factory.mktemp("twonode")
    job = cluster.sbatch("t5_11b_lamp.sh", cwd, {**TINY, "MODEL": tiny_t5_dir}, TWO_NODE_JOB)
    (state,) = cluster.wait(job)
    return job, cwd, state


@needs_slurm
def test_twonode_lamp_job_completes_with_a_rank_on_each_node(twonode_job):
    job, cwd, state = twonode_job
    log = log_of(cwd)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-4000:]
    nodes = hostnames(state["NodeList"])
    assert len(nodes) == 2 and state["BatchHost"] == nodes[0], state
    assert_ran_across_two_nodes(log, starts=1)
    report = json.loads((cwd / "runs" / f"t5_11b_lamp-{job}" / "report.json").read_text())
    assert report["world_size"] == 2 and report["zero_stage"] == 3 and report["train"]["steps"] == 60


@needs_slurm
def test_twonode_usr1_requeue_resumes_to_the_same_loss_curve(cluster, twonode_job, tiny_t5_dir, tmp_path):
    """SIGUSR1 to a two-node job's batch shell, which runs on the first node: srun forwards it to the ranks
    on both nodes, they agree on the step, checkpoint it and stop; the job requeues itself, resumes on
    two nodes from that step, and ends on the uninterrupted two-node job's losses and prompt."""
    reference_job, reference_cwd, _ = twonode_job
    job = cluster.sbatch("t5_11b_lamp.sh", tmp_path, {**TINY, "MODEL": tiny_t5_dir}, TWO_NODE_JOB)
    run = tmp_path / "runs" / f"t5_11b_lamp-{job}"
    wait_for(lambda: saved_step(run) > 0, "no checkpoint", tmp_path)  # training is under way
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    (state,) = cluster.wait(job)  # a job that requeues itself is never in a final state in between
    log = log_of(tmp_path)
    assert state["JobState"] == "COMPLETED" and int(state["Restarts"]) == 1, (state, log[-4000:])
    stops = [int(n) for n in re.findall(r"SIGUSR1: checkpoint of step (\d+) written", log)]
    resumes = [int(n) for n in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert len(stops) == 1 and resumes == stops and 0 < stops[0] < 60, log[-4000:]
    assert log.count("requeueing job") == 1
    assert_ran_across_two_nodes(log, starts=2)

    reference = reference_cwd / "runs" / f"t5_11b_lamp-{reference_job}"
    got, want = (json.loads((d / "report.json").read_text()) for d in (run, reference))
    assert len(want["train"]["loss_curve"]) == 60
    torch.testing.assert_close(got["train"]["loss_curve"], want["train"]["loss_curve"], rtol=1e-5, atol=1e-5)
    assert got["metrics"] == want["metrics"]
    assert_same_prompt(run, reference)


# the SuperGLUE grid, one run per element and fused; a gentle learning rate, so that the fused runs' other
# rounding (their padded batch) stays far below the tolerance over 40 steps (tests/test_fused.py)
SWEEP_GRID = {"TASKS": "cb rte", "METHODS": "dpt", "SEEDS": "0 1", "MODEL": "", "PRECISION": "fp32",
              "PROMPT_LENGTH": "4", "MAX_STEPS": "40", "SAVE_STEPS": "5", "LEARNING_RATE": "0.02", "BATCH_SIZE": "4",
              "MAX_EVAL_SAMPLES": "6", "DECODING": "rank", "PROGRESS": "false"}
SWEEP_RUNS = sorted(f"{t}-dpt-seed{s}" for t in ("cb", "rte") for s in (0, 1))


@pytest.fixture(scope="module")
def superglue_arrays(cluster, tiny_t5_dir, tmp_path_factory):
    """slurm/superglue_sweep.sh on SWEEP_GRID twice, submitted at once: one run per element (--array=0-3%2), and
    FUSE=1 (--array=0-1: an element per task, its two runs fused), whose element 0 gets SIGUSR1 through its batch
    shell once a run of it has a checkpoint: mode -> (job id, submit directory, final states)."""
    env = {**SWEEP_GRID, "MODEL": tiny_t5_dir}
    cwd = {mode: tmp_path_factory.mktemp(f"superglue-{mode}") for mode in ("alone", "fused")}
    # one rank per element, at most two at once: the two nodes share this machine's two CPUs
    jobs = {"alone": cluster.sbatch("superglue_sweep.sh", cwd["alone"], env,
                                    [*CPU_JOB, "--ntasks-per-node=1", "--array=0-3%2"]),
            "fused": cluster.sbatch("superglue_sweep.sh", cwd["fused"], {**env, "FUSE": "1"},
                                    [*CPU_JOB, "--ntasks-per-node=1", "--array=0-1"])}
    first = cwd["fused"] / "runs" / f"superglue-{jobs['fused']}" / "cb-dpt-seed0"
    wait_for(lambda: saved_step(first) > 0, "no checkpoint in the fused element", cwd["fused"], timeout=600)
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{jobs['fused']}_0"], check=True)
    return {mode: (job, cwd[mode], cluster.wait(job, timeout=900, count=4 if mode == "alone" else 2))
            for mode, job in jobs.items()}


@needs_slurm
def test_superglue_array_leaves_a_report_per_element_and_a_table(superglue_arrays):
    job, cwd, states = superglue_arrays["alone"]
    sweep = cwd / "runs" / f"superglue-{job}"
    assert all(s["JobState"] == "COMPLETED" for s in states), (states, log_of(cwd)[-4000:])
    assert sorted(p.parent.name for p in sweep.glob("*/report.json")) == SWEEP_RUNS
    for name in SWEEP_RUNS:
        report = json.loads((sweep / name / "report.json").read_text())
        task, _, seed = name.split("-")
        assert report["config"]["task"] == task and report["config"]["seed"] == int(seed[4:])
        assert report["config"]["per_device_train_batch_size"] == 4  # BATCH_SIZE, the old spelling, still works

    lrpt = Path(sys.executable).parent / "lrpt"
    table = subprocess.run([str(lrpt), "table", *[str(sweep / n) for n in SWEEP_RUNS]], capture_output=True,
                           text=True, check=True).stdout
    header = next(line for line in table.splitlines() if line.startswith("|"))
    assert "cb" in header.lower() and "rte" in header.lower() and "avg" in header.lower()
    assert any(line.split("|")[1].strip().startswith("dpt") for line in table.splitlines() if line.startswith("|"))
    # the last element to finish wrote the same table
    assert (sweep / "table.md").read_text().strip() == table.strip()


@needs_slurm
def test_fused_superglue_array_preempted_ends_on_the_runs_alone(superglue_arrays):
    """FUSE=1: two elements, each one task's two runs fused in one `lrpt sweep --fuse`; element 0 stopped by
    SIGUSR1 (every run of it checkpoints), requeued and resumed. Every run's directory equals its run trained
    alone by the one-run-per-element array (curve, prompt, metrics, checkpoints), its report says with whom it
    was fused, and the last element wrote the same table."""
    from test_fused import assert_same_run

    job, cwd, states = superglue_arrays["fused"]
    alone_job, alone_cwd, _ = superglue_arrays["alone"]
    log = log_of(cwd)
    assert [s["JobState"] for s in states] == ["COMPLETED"] * 2, (states, log[-4000:])
    assert sorted(int(s["Restarts"]) for s in states) == [0, 1], states
    assert log.count("requeueing job") == 1 and "group 1/2, fused: cb-dpt-seed0, cb-dpt-seed1" in log, log[-4000:]
    stops = re.findall(r"SIGUSR1: checkpoint of step (\d+) written", log)
    assert len(stops) == 2 and all(0 < int(n) < 40 for n in stops), log[-4000:]  # both runs of element 0
    sweep, alone = cwd / "runs" / f"superglue-{job}", alone_cwd / "runs" / f"superglue-{alone_job}"
    assert sorted(p.parent.name for p in sweep.glob("*/report.json")) == SWEEP_RUNS
    for name in SWEEP_RUNS:
        task = name.split("-")[0]
        assert_same_run(sweep / name, alone / name, [n for n in SWEEP_RUNS if n.startswith(task) and n != name])
    assert (sweep / "table.md").read_text() == (alone / "table.md").read_text()


# ---- the other templates, each submitted once with its own defaults ---------------------------------------

# what every job below overrides: a CPU's precision and a short run (a short prompt, rank decoding); nothing
# else a template sets by default
SHORT = {"PRECISION": "fp32", "PROMPT_LENGTH": "4", "MAX_STEPS": "6", "MAX_EVAL_SAMPLES": "4", "DECODING": "rank",
         "PROGRESS": "false"}
# the templates' --exclusive would hold a whole node per job: let the jobs share the two nodes (never a core)
SHARED = ["--oversubscribe"]
FEWSHOT_GRID = {"TASKS": "cb rte", "METHODS": "dpt", "SHOTS": "8", "SEEDS": "0 1"}
SINGLE_RUN_TEMPLATES = ["t5_11b_dpt.sh", "t5_11b_pt.sh", "llama_7b_dpt.sh"]


def job_name(script: str) -> str:
    return re.search(r"^#SBATCH --job-name=(\S+)$", (ROOT / "slurm" / script).read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def template_jobs(cluster, tiny_t5_dir, tiny_llama_dir, tmp_path_factory):
    """t5_11b_dpt.sh (2 ranks on one node), t5_11b_pt.sh (a rank on each of two nodes), llama_7b_dpt.sh (the tiny
    LLaMA, 2 ranks on one node) and a 4-element fewshot_sweep.sh array (two at a time), submitted at once and
    waited for together: script -> (job id, submit directory, final states)."""
    launches = {"t5_11b_dpt.sh": (tiny_t5_dir, [*CPU_JOB, "--ntasks-per-node=2"], {}),
                "t5_11b_pt.sh": (tiny_t5_dir, TWO_NODE_JOB, {}),
                "llama_7b_dpt.sh": (tiny_llama_dir, [*CPU_JOB, "--ntasks-per-node=2"], {}),
                "fewshot_sweep.sh": (tiny_t5_dir, [*CPU_JOB, "--ntasks-per-node=1", "--array=0-3%2"], FEWSHOT_GRID),
                "fewshot_sweep.sh FUSE=1": (tiny_t5_dir, [*CPU_JOB, "--ntasks-per-node=1", "--array=0-1"],
                                            {**FEWSHOT_GRID, "FUSE": "1"})}
    submitted = {}
    for key, (model, flags, grid) in launches.items():
        script = key.split()[0]
        overridden = set(SHORT) & set(template_defaults(ROOT / "slurm" / script))
        assert overridden == {"PRECISION", "PROMPT_LENGTH", "DECODING"}, script
        cwd = tmp_path_factory.mktemp(key.replace(" ", "-").replace("=", "").removesuffix(".sh"))
        submitted[key] = cwd, cluster.sbatch(script, cwd, {**SHORT, **grid, "MODEL": model}, [*flags, *SHARED])
    counts = {"fewshot_sweep.sh": 4, "fewshot_sweep.sh FUSE=1": 2}
    return {key: (job, cwd, cluster.wait(job, timeout=900, count=counts.get(key, 1)))
            for key, (cwd, job) in submitted.items()}


@needs_slurm
@pytest.mark.parametrize("script", SINGLE_RUN_TEMPLATES)
def test_template_job_runs_on_its_own_defaults(template_jobs, script, tiny_t5_dir, tiny_llama_dir):
    """The job completes, and its report is of the template's method, task, batch, ZeRO stage (its DEEPSPEED) and
    SAVE_STEPS (a checkpoint at each multiple of it below MAX_STEPS, and the last), on the ranks and nodes it ran
    on; llama_7b_dpt.sh trains the decoder-only LLaMA."""
    job, cwd, (state,) = template_jobs[script]
    log = log_of(cwd)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", log[-4000:]
    defaults = template_defaults(ROOT / "slurm" / script)
    run = cwd / "runs" / f"{job_name(script)}-{job}"  # the template's default OUTPUT_DIR
    report = json.loads((run / "report.json").read_text())
    config = report["config"]
    assert report["method"] == config["method"] == defaults["METHOD"]
    assert config["task"] == defaults["TASK"] and config["precision"] == "fp32"
    batch = int(defaults["PER_DEVICE_TRAIN_BATCH_SIZE"])
    assert config["per_device_train_batch_size"] == batch and report["data"]["train_batch_size"] == 2 * batch
    assert config["deepspeed"] == defaults["DEEPSPEED"].replace("$LRPT_ROOT", str(ROOT))
    assert report["zero_stage"] == int(re.search(r"zero(\d)\.json$", defaults["DEEPSPEED"]).group(1)) == 3
    assert report["world_size"] == 2 and report["train"]["steps"] == 6
    save, steps = int(defaults["SAVE_STEPS"]), int(SHORT["MAX_STEPS"])
    assert config["save_steps"] == save
    want = [f"step-{s:06d}" for s in [*range(save, steps, save), steps]]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == want
    assert (run / "checkpoints" / "latest").read_text().strip() == want[-1]

    ((nodes, _, ranks),) = starts_of(log)
    if script == "t5_11b_pt.sh":  # sbatch --nodes=2 --ntasks-per-node=1
        assert_ran_across_two_nodes(log, starts=1)
    else:
        assert nodes == [state["BatchHost"]] and ranks == {0: nodes[0], 1: nodes[0]}, log[-4000:]
    model = tiny_llama_dir if script == "llama_7b_dpt.sh" else tiny_t5_dir
    backbone = json.loads((Path(model) / "config.json").read_text())
    assert config["model"] == model
    assert backbone.get("is_encoder_decoder", False) == (script != "llama_7b_dpt.sh"), backbone


@needs_slurm
def test_fewshot_array_leaves_a_k_shot_report_per_element_and_a_table(template_jobs):
    """TASKS="cb rte" METHODS=dpt SHOTS=8 SEEDS="0 1" as --array=0-3%2: every element trains on K sampled rows of
    the bundled data (CB and RTE: one example per row, so K examples, fewer than the file has), and the last
    to finish writes the table `lrpt table` makes of the four runs."""
    job, cwd, states = template_jobs["fewshot_sweep.sh"]
    assert all(s["JobState"] == "COMPLETED" for s in states), (states, log_of(cwd)[-4000:])
    sweep = cwd / "runs" / f"fewshot-{job}"
    k = int(FEWSHOT_GRID["SHOTS"])
    names = sorted(f"{t}-dpt-seed{s}-k{k}" for t in ("cb", "rte") for s in (0, 1))
    assert sorted(p.parent.name for p in sweep.glob("*/report.json")) == names
    defaults = template_defaults(ROOT / "slurm" / "fewshot_sweep.sh")
    for name in names:
        report = json.loads((sweep / name / "report.json").read_text())
        task, method, seed, _ = name.split("-")
        config = report["config"]
        got = (config["task"], config["method"], config["seed"], config["few_shot"])
        assert got == (task, method, int(seed[4:]), k)
        assert config["save_steps"] == int(defaults["SAVE_STEPS"]) and report["world_size"] == 1
        rows = (ROOT / "eval" / "demo_data" / task.upper() / "train.jsonl").read_text().splitlines()
        assert report["data"]["train_examples"] == k < len(rows), report["data"]

    lrpt = Path(sys.executable).parent / "lrpt"
    table = subprocess.run([str(lrpt), "table", *[str(sweep / n) for n in names]], capture_output=True, text=True,
                           check=True).stdout
    assert (sweep / "table.md").read_text().strip() == table.strip()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.split("\n\n")[0].splitlines()
            if line.startswith("|")]  # the table; its few-shot statistics follow it
    head, body = rows[0], rows[2:]  # rows[1]: the alignment row
    assert head[:2] == ["K", "Method"] and head[-1] == "Avg", table
    assert [c.split()[0] for c in head[3:-1]] == ["CB", "RTE"], table
    assert [r[:2] for r in body] == [[str(k), "dpt"]], table  # one row: the four runs' mean over seeds


@needs_slurm
def test_fused_fewshot_array_equals_the_one_run_per_element_array(template_jobs):
    """The same grid with FUSE=1: an element per task, its two K-shot runs fused; every run's directory equals
    the one-run-per-element array's (curve, prompt, metrics, checkpoints), and the last element wrote the
    same table."""
    from test_fused import assert_same_run

    job, cwd, states = template_jobs["fewshot_sweep.sh FUSE=1"]
    alone_job, alone_cwd, _ = template_jobs["fewshot_sweep.sh"]
    assert all(s["JobState"] == "COMPLETED" for s in states), (states, log_of(cwd)[-4000:])
    sweep, alone = cwd / "runs" / f"fewshot-{job}", alone_cwd / "runs" / f"fewshot-{alone_job}"
    k = int(FEWSHOT_GRID["SHOTS"])
    names = sorted(f"{t}-dpt-seed{s}-k{k}" for t in ("cb", "rte") for s in (0, 1))
    assert sorted(p.parent.name for p in sweep.glob("*/report.json")) == names
    for name in names:
        task = name.split("-")[0]
        assert_same_run(sweep / name, alone / name, [n for n in names if n.startswith(task) and n != name])
        assert json.loads((sweep / name / "report.json").read_text())["config"]["few_shot"] == k
    assert (sweep / "table.md").read_text() == (alone / "table.md").read_text()


# ---- FUSE=1 on a backbone that trains with dropout (issue 30, item 8) -----------------------------------------

@needs_slurm
def test_fused_sweep_on_a_backbone_with_dropout_completes_each_run_as_alone(cluster, tmp_path):
    """The README's `FUSE=1 sbatch slurm/superglue_sweep.sh` on its default backbone's kind: T5 v1.1's config has
    dropout_rate 0.1, which a fused pass cannot draw per run. The element trains its group's runs one after
    another (each as alone, the log says why) and writes the table, rather than failing once it has its node."""
    from test_trust_fused import dropout_t5

    model = dropout_t5(tmp_path / "dropout-t5")
    env = {**SHORT, "TASKS": "rte", "METHODS": "pt dpt", "SEEDS": "0", "MODEL": model, "FUSE": "1"}
    job = cluster.sbatch("superglue_sweep.sh", tmp_path, env, [*CPU_JOB, "--ntasks-per-node=1", "--array=0-0"])
    (state,) = cluster.wait(job, timeout=600)
    log = log_of(tmp_path)
    assert state["JobState"] == "COMPLETED", (state, log[-4000:])
    assert "group 1/1, not fused (" in log and "dropout_rate=0.1" in log, log[-4000:]
    sweep = tmp_path / "runs" / f"superglue-{job}"
    for name in ("rte-pt-seed0", "rte-dpt-seed0"):
        report = json.loads((sweep / name / "report.json").read_text())
        assert "fused" not in report and report["train"]["steps"] == int(SHORT["MAX_STEPS"])
    assert (sweep / "table.md").is_file()


@needs_slurm
def test_a_grid_variable_sweeps_on_slurm_as_lrpt_sweep_does(cluster, tiny_t5_dir, tmp_path):
    """GRID="learning_rate=0.1,0.03" on slurm/superglue_sweep.sh: an element per point, each run at its point's
    value, and the table the last element writes equals `lrpt sweep --grid` on the same settings."""
    env = {**SWEEP_GRID, "TASKS": "rte", "SEEDS": "0", "MODEL": tiny_t5_dir, "MAX_STEPS": "4",
           "GRID": "learning_rate=0.1,0.03"}
    del env["LEARNING_RATE"]
    job = cluster.sbatch("superglue_sweep.sh", tmp_path, env, [*CPU_JOB, "--ntasks-per-node=1", "--array=0-1"])
    states = cluster.wait(job, timeout=600, count=2)
    assert all(s["JobState"] == "COMPLETED" for s in states), (states, log_of(tmp_path)[-4000:])
    sweep = tmp_path / "runs" / f"superglue-{job}"
    for rate in ("0.1", "0.03"):
        report = json.loads((sweep / f"rte-dpt-seed0-learning_rate{rate}" / "report.json").read_text())
        assert report["config"]["learning_rate"] == float(rate)
    # the same settings as flags: the template's defaults under the environment, old spellings translated
    fields = slurm_env.variables()
    settings = {**template_defaults(ROOT / "slurm" / "superglue_sweep.sh"), **env}
    settings = {slurm_env.ALIASES.get(var, var): value for var, value in settings.items()}
    flags = [part for var, value in settings.items() if var in fields and fields[var] not in
             ("task", "method", "seed", "output_dir", "learning_rate") and value
             for part in (f"--{fields[var]}", value)]
    lrpt = Path(sys.executable).parent / "lrpt"
    subprocess.run([str(lrpt), "sweep", "--tasks", "rte", "--methods", "dpt", "--seeds", "0", "--grid",
                    "learning_rate=0.1,0.03", "--output_dir", str(tmp_path / "local"), *flags], check=True,
                   capture_output=True, env=clean_env())
    assert (sweep / "table.md").read_text() == (tmp_path / "local" / "table.md").read_text()
