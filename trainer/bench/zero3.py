"""Benchmark: per-rank backbone bytes and peak memory, 1 rank vs 2 ranks under ZeRO-3, in one run.

    python -m lrpt.trainer.bench.zero3 --width 768 --layers 8      # a ~100M-parameter T5, CPU

Saves a random T5 of the given size, trains a few DPT steps with `deepspeed --num_gpus N
trainer/run.py --deepspeed ds_configs/zero3.json` for N = 1 and 2, and prints each rank's figures
and the 2-rank/1-rank ratios from the runs' report.json files.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from ..config.ds_config import shipped
from ..rundir.report import Report
from ..runtime.distributed import TRAIN_SCRIPT, env_without_launcher, free_port


def run(model_dir: str, ranks: int, out: Path, steps: int, ds_config: str) -> Report:
    env = env_without_launcher()
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
           str(TRAIN_SCRIPT),
           "--model", model_dir, "--deepspeed", ds_config, "--output_dir", str(out),
           "--max_steps", str(steps), "--prompt_length", "20", "--per_device_train_batch_size", "4",
           "--max_eval_samples", "8", "--progress", "false"]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return Report.read(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ds_config", default=shipped("zero3"))
    args = parser.parse_args()

    from ..backbone.presets import save_preset

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_preset("tiny-t5", f"{tmp}/model", width=args.width, layers=args.layers)
        reports = {n: run(model_dir, n, Path(tmp) / f"ranks{n}", args.steps, args.ds_config) for n in (1, 2)}
    mib = 2 ** 20
    total = reports[1].memory.backbone_bytes_total
    print(f"T5 width {args.width}, {args.layers}+{args.layers} layers: {total / 4 / 1e6:.1f}M frozen parameters "
          f"({total / mib:.0f} MiB fp32), ZeRO-3, DPT c=20")
    print(f"DeepSpeed config: {args.ds_config}")
    print("| ranks | rank | backbone bytes held | share | load peak (allocator) | peak RSS | step time p50 |")
    print("|---|---|---|---|---|---|---|")
    for n, report in reports.items():
        mem, step_time = report.memory, report.throughput.step_time_s
        p50 = step_time.p50 if step_time is not None else float("nan")
        for r, (held, load, peak) in enumerate(zip(mem.backbone_bytes_held, mem.load_peak_bytes, mem.peak_bytes)):
            print(f"| {n} | {r} | {held / mib:.1f} MiB | {held / total:.3f} | {load / mib:.0f} MiB | "
                  f"{peak / mib:.0f} MiB | {p50:.3f} s |")
    two, one = reports[2].memory, reports[1].memory
    held_ratio = max(two.backbone_bytes_held) / one.backbone_bytes_held[0]
    load_ratio = max(two.load_peak_bytes) / one.load_peak_bytes[0]
    peak_ratio = max(two.peak_bytes) / one.peak_bytes[0]
    print(f"2-rank / 1-rank, per rank: backbone bytes held {held_ratio:.3f}, load peak {load_ratio:.3f}, "
          f"peak RSS {peak_ratio:.3f}")


if __name__ == "__main__":
    main()
