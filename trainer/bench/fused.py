"""Benchmark: a sweep fused (`lrpt sweep --fuse`, train.fused) against the same runs one after another.

    python -m lrpt.trainer.bench.fused walltime                          # tiny-t5, 3 methods x 2 seeds
    python -m lrpt.trainer.bench.fused walltime --width 768 --layers 8   # a ~95M T5 (random weights)
    python -m lrpt.trainer.bench.fused gathers --width 768 --layers 8    # ZeRO-3, 2 ranks: all-gather bytes
    python -m lrpt.trainer.bench.fused slurm                             # the Slurm sweep: per run vs FUSE=1
    python -m lrpt.trainer.bench.fused walltime --model smollm2-135m --methods pt,dpt \
        --grid learning_rate=0.3,0.1,0.03 --ways fused,fused-standard,processes   # a grid, a real decoder-only

walltime: the same runs (with --grid, every point of it) by each of --ways, alternated --repeats times:
`lrpt sweep` in one process (sweep), `lrpt sweep --fuse` (fused: on the shared prefix where the backbone
takes it), `lrpt sweep --fuse --shared_prefix false` (fused-standard), one `lrpt train` process per run
then `lrpt table` (processes); prints the wall time to the table and each against the fused sweep.
gathers: the same --ways but processes under `deepspeed --num_gpus 2` with ZeRO-3 and DeepSpeed's comms
logger (sweep standing for one process per run: the same gathers); each rank sums the all-gathers of the
training steps (from a run's first step to its last, evaluation left out) and prints the bytes per trained
example of each, their ratio to the fused sweep's, and each way's peak memory per rank (its reports').
slurm: slurm/superglue_sweep.sh on a running cluster, an element per run one at a time against FUSE=1.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..rundir.report import Report

CHECKOUT = Path(__file__).resolve().parents[2]  # slurm/ lives in the checkout, beside trainer/

WAYS = {"sweep": ("lrpt sweep (one after another)", []), "fused": ("lrpt sweep --fuse", ["--fuse"]),
        "fused-standard": ("lrpt sweep --fuse --shared_prefix false", ["--fuse", "--shared_prefix", "false"]),
        "processes": ("one lrpt train process per run, then lrpt table", None)}


def run_settings(model: str, steps: int) -> list[str]:
    """Every benchmarked run's settings: RTE (the bundled demo rows), c = 20, 4 rows per rank and step."""
    return ["--model", model, "--prompt_length", "20", "--per_device_train_batch_size", "4", "--max_steps",
            str(steps), "--max_source_length", "128", "--decoding", "rank", "--max_eval_samples", "8",
            "--progress", "false"]


def sweep_flags(args, model: str, out: Path) -> list[str]:
    """The benchmarked sweep: --methods x --seeds x --grid on RTE."""
    grid = ["--grid", *args.grid] if args.grid else []
    return ["--tasks", "rte", "--methods", args.methods, "--seeds", args.seeds, *grid, "--output_dir", str(out),
            *run_settings(model, args.steps)]


def train_commands(args, model: str, out: Path) -> list[list[str]]:
    """The sweep as one `lrpt train` per run, each in the directory the sweep gives it, then `lrpt table` (a row
    per grid point, as the sweep's own table)."""
    from ..config.grid import parse_grid, point_flags, point_name, points

    axes = parse_grid(args.grid)
    cli = [sys.executable, "-m", "lrpt.trainer.cli.main"]
    commands = [[*cli, "train", "--task", "rte", "--method", method, "--seed", seed, *point_flags(point),
                 "--output_dir", str(out / f"rte-{method}-seed{seed}{point_name(point)}"),
                 *run_settings(model, args.steps)]
                for method, seed, point in itertools.product(args.methods.split(","), args.seeds.split(","),
                                                             points(axes))]
    by = ["--by", *[axis.field for axis in axes]] if axes else []
    return [*commands, [*cli, "table", str(out), *by, "--output", str(out / "table")]]


def runs_of(args) -> int:
    from ..config.grid import parse_grid, points

    return len(args.methods.split(",")) * len(args.seeds.split(",")) * len(points(parse_grid(args.grid)))


def backbone(args, root: Path) -> str:
    """--model, or tiny-t5 at its defaults, or saved at --width/--layers (random weights, dropout 0)."""
    if args.model:
        return args.model
    if args.width is None:
        return "tiny-t5"
    from ..backbone.presets import save_preset

    return save_preset("tiny-t5", str(root / "t5"), width=args.width, layers=args.layers)


def walltime(args) -> None:
    """The same runs by each of --ways, to the table: `lrpt sweep` (one process, runs in turn), fused, fused on the
    standard path, and one `lrpt train` process per run in turn (what a Slurm array element runs)."""
    from ..runtime.distributed import env_without_launcher

    root = Path(tempfile.mkdtemp(prefix="lrpt-bench-fused-"))
    model = backbone(args, root)
    times: dict[str, list[float]] = {WAYS[way][0]: [] for way in args.ways}
    for repeat in range(args.repeats):
        for way in args.ways:
            name, extra = WAYS[way]
            out = root / f"{repeat}-{way}"
            if extra is None:
                commands = train_commands(args, model, out)
            else:
                commands = [[sys.executable, "-m", "lrpt.trainer.cli.main", "sweep", *sweep_flags(args, model, out),
                             *extra]]
            start = time.perf_counter()
            for cmd in commands:
                subprocess.run(cmd, check=True, env=env_without_launcher(), capture_output=True)
            times[name].append(time.perf_counter() - start)
            if not (out / "table.md").is_file():
                raise SystemExit(f"{name}: no table written in {out}")
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    fused = WAYS["fused"][0] if "fused" in args.ways else next(iter(times))
    print_times(args, model, times, fused, "wall time to the table (s)")


def print_times(args, model: str, times: dict[str, list[float]], fused: str, what: str) -> None:
    """The fastest time of each way, and each against the fused one's, as a table."""
    best = {name: min(t) for name, t in times.items()}
    grid = f" x {' '.join(args.grid)}" if args.grid else ""
    print(f"\n{model}: {runs_of(args)} runs ({args.methods} x seeds {args.seeds}{grid}), {args.steps} steps each, "
          f"fastest of {args.repeats}\n| how | {what} | / fused |\n|---|---|---|")
    for name, t in best.items():
        print(f"| {name} | {t:.1f} | {t / best[fused]:.2f} |")


def gathers(args) -> None:
    from ..runtime.distributed import env_without_launcher, free_port

    root = Path(tempfile.mkdtemp(prefix="lrpt-bench-fused-"))
    model = backbone(args, root)
    from ..config.ds_config import shipped

    config = root / "zero3-comms.json"
    ds = json.loads(Path(shipped("zero3")).read_text())
    ds["comms_logger"] = {"enabled": True, "prof_all": True, "verbose": False, "debug": False}
    config.write_text(json.dumps(ds))
    env = {**env_without_launcher(), "DS_ACCELERATOR": "cpu"}
    per_example = {}
    for way in ("sweep" if w == "processes" else w for w in args.ways):
        name, extra = WAYS[way]
        out = root / way
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               "--module", "lrpt.trainer.bench.fused", "worker", *sweep_flags(args, model, out), "--deepspeed",
               str(config), *extra]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        counted = json.loads((out / "gathers-rank0.json").read_text())
        per_example[name] = counted["bytes"] / counted["examples"]
        peak = max(max(Report.read(report).memory.peak_bytes) for report in out.glob("*/report.json"))
        print(f"{name}: {counted['bytes']:,} all-gather bytes on rank 0 over {counted['examples']} trained examples "
              f"({counted['count']:,} all-gathers); peak per rank {peak / 2**30:.2f} GiB", flush=True)
    fused = per_example.get(WAYS["fused"][0], min(per_example.values()))
    print(f"\nall-gather bytes per trained example, rank 0 (K = {runs_of(args)}):")
    for name, value in per_example.items():
        print(f"| {name} | {value:,.0f} | {value / fused:.2f} |")


def worker(argv: list[str]) -> int:
    """One rank of a sweep, its training steps' all-gathers summed (train.run_loop's begin .. finish)."""
    import lrpt.trainer  # noqa: F401  (DS_ACCELERATOR before deepspeed)
    from deepspeed.comm import comms_logger

    from ..cli.sweep import main as sweep
    from ..runtime import distributed
    from ..train import run_loop

    counted = {"count": 0, "bytes": 0, "examples": 0, "recording": False}
    begin, finish = run_loop.RunLoop.begin, run_loop.RunLoop.finish

    def begin_counting(self, *a, **kw):
        comms_logger.comms_dict.clear()
        counted["recording"] = True
        return begin(self, *a, **kw)

    def finish_counting(self, *a, **kw):
        if counted["recording"]:  # the first finish after training: the steps' gathers, before any evaluation
            for op, by_size in comms_logger.comms_dict.items():
                if "gather" in op:
                    for size, record in by_size.items():
                        counted["count"] += record[0]
                        counted["bytes"] += record[0] * size
            counted["recording"] = False
        counted["examples"] += self.state["step"] * self.run.ds_config.train_batch_size
        return finish(self, *a, **kw)

    run_loop.RunLoop.begin, run_loop.RunLoop.finish = begin_counting, finish_counting
    code = sweep(argv)
    out = Path(argv[argv.index("--output_dir") + 1])
    counted.pop("recording")
    (out / f"gathers-rank{distributed.rank()}.json").write_text(json.dumps(counted))
    distributed.shutdown()
    return code


def wait_for_array(job: str, poll_s: float = 0.2) -> None:
    """Until every element of the array has ended (`scontrol show job`, polled: `sbatch --wait` backs off to
    tens of seconds between its own polls)."""
    done = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
    while True:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        states = [line.split("JobState=")[1].split()[0] for line in shown.splitlines() if "JobState=" in line]
        if states and all(state in done for state in states):  # a throttled array's pending rest is one PENDING line
            if any(state != "COMPLETED" for state in states):
                raise SystemExit(f"array {job}: {states}")
            return
        time.sleep(poll_s)


def slurm(args) -> None:
    """slurm/superglue_sweep.sh as Slurm runs it: an element per run, one at a time (--array=0-(K-1)%1), against
    FUSE=1 (one element, the task's K runs fused); each timed from submission until the last element has ended
    (the template's table written). Needs a running Slurm cluster (tests/slurm_cluster.sh)."""
    import shutil

    from ..runtime.distributed import env_without_launcher

    if shutil.which("sbatch") is None:
        raise SystemExit("slurm: no sbatch on PATH; start a cluster first (bash tests/slurm_cluster.sh)")
    root = Path(tempfile.mkdtemp(prefix="lrpt-bench-fused-slurm-"))
    model = backbone(args, root)
    methods, seeds = args.methods.split(","), args.seeds.split(",")
    runs = runs_of(args)
    grid = {"TASKS": "rte", "METHODS": " ".join(methods), "SEEDS": " ".join(seeds), "MODEL": model, "PRECISION": "fp32",
            "PROMPT_LENGTH": "20", "PER_DEVICE_TRAIN_BATCH_SIZE": "4", "MAX_STEPS": str(args.steps),
            "MAX_SOURCE_LENGTH": "128", "DECODING": "rank", "MAX_EVAL_SAMPLES": "8", "PROGRESS": "false",
            "LRPT_ROOT": str(CHECKOUT), "PYTHON": sys.executable}
    ways = {f"superglue_sweep.sh, an element per run (--array=0-{runs - 1}%1)": ({}, f"0-{runs - 1}%1"),
            "superglue_sweep.sh FUSE=1 (one element)": ({"FUSE": "1"}, "0-0")}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(args.repeats):
        for name, (extra, array) in ways.items():
            cwd = root / f"{repeat}-{'fused' if extra else 'alone'}"
            cwd.mkdir()
            env = {**env_without_launcher(), **grid, **extra}
            start = time.perf_counter()
            job = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0",
                                  "--time=30", f"--array={array}", f"--output={cwd}/slurm-%A_%a.out",
                                  str(CHECKOUT / "slurm" / "superglue_sweep.sh")],
                                 cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.split(";")[0]
            wait_for_array(job.strip())
            times[name].append(time.perf_counter() - start)
            if not list(cwd.glob("runs/superglue-*/table.md")):
                raise SystemExit(f"{name}: no table written; see {cwd}/runs/slurm")
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    print_times(args, model, times, "superglue_sweep.sh FUSE=1 (one element)", "submission to the table (s)")


def main(argv: list[str] | None = None) -> int:
    from ..runtime.distributed import without_launcher_args

    argv = without_launcher_args(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m lrpt.trainer.bench.fused", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("walltime", "gathers", "slurm"))
    parser.add_argument("--methods", default="pt,dpt,lamp")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run")
    parser.add_argument("--grid", nargs="*", default=[], metavar="FIELD=V1,V2", help="as lrpt sweep --grid")
    parser.add_argument("--ways", type=lambda s: s.split(","), default=["sweep", "fused", "processes"],
                        help=f"comma-separated, of {', '.join(WAYS)}")
    parser.add_argument("--model", help="a preset or path (default: tiny-t5, or the T5 of --width)")
    parser.add_argument("--width", type=int, help="a T5 of this width (default: tiny-t5 as shipped)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if unknown := set(args.ways) - set(WAYS):
        parser.error(f"--ways: {', '.join(sorted(unknown))}; known: {', '.join(WAYS)}")
    if args.what == "slurm" and args.grid:
        parser.error("--grid: the slurm benchmark times the templates' own axes; give it no grid")
    {"walltime": walltime, "gathers": gathers, "slurm": slurm}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
