"""Benchmark: what each rank holds of a quantized frozen backbone under ZeRO-3, 1 vs 2 ranks, in one run.

    python -m lrpt.trainer.bench.quant                       # tiny-t5 and tiny-llama presets, CPU

For each backbone x quantization (none, 8-bit, 4-bit nf4, 4-bit nf4 + double quant) x DeepSpeed
config (ZeRO-3, ZeRO-3 with parameter offload) x ranks (1, 2) it runs `deepspeed --num_gpus N
trainer/run.py` for a few DPT steps and prints, per rank, from each run's report.json:
- held: every tensor the frozen backbone keeps alive after the first step (parameters or ZeRO
  shards, buffers, tensors hung on them as attributes; once per storage);
- its share of the same run at 1 rank, and of the unquantized unsharded backbone;
- the replicated 4-bit quant_state bytes (included in held);
- the load peak (memory.load_peak_bytes: the allocator's, while the backbone loads; sharded under ZeRO-3,
  backbone.quant_load).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from ..config.ds_config import shipped
from ..rundir.report import Report
from ..runtime.distributed import TRAIN_SCRIPT, free_port

QUANTS = {"none": [], "8bit": ["--load_in_8bit"], "4bit-nf4": ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4"],
          "4bit-nf4-dq": ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4", "--bnb_4bit_use_double_quant"]}


def run(model: str, quant: list[str], ds_config: str, ranks: int, out: Path, steps: int) -> Report:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
           str(TRAIN_SCRIPT),
           "--model", model, "--deepspeed", shipped(ds_config), "--output_dir", str(out),
           "--max_steps", str(steps), "--prompt_length", "20", "--per_device_train_batch_size", "4",
           "--max_eval_samples", "8", "--progress", "false", *quant]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return Report.read(out)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{os.cpu_count()} x {cpu}, {mem:.1f} GiB, no GPU" if not _cuda()
            else f"{os.cpu_count()} x {cpu}, {mem:.1f} GiB, GPU")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny-t5,tiny-llama")
    parser.add_argument("--quants", default=",".join(QUANTS))
    parser.add_argument("--ds_configs", default="zero3,zero3_offload")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    import bitsandbytes
    import deepspeed
    import torch
    import transformers

    print(f"machine: {machine()}; torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
          f"transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}")
    print("| backbone | quantization | DeepSpeed | ranks | rank | held | vs 1 rank | vs unquantized | "
          "quant_state (replicated) | load peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    kib, mib = 1024, 2 ** 20
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for quant in args.quants.split(","):
                for ds_config in args.ds_configs.split(","):
                    reports = {n: run(model, QUANTS[quant], ds_config, n,
                                      Path(tmp) / f"{model}-{quant}-{ds_config}-{n}", args.steps)
                               for n in (1, 2)}
                    one = reports[1].memory.backbone_bytes_held_all[0]
                    for n, report in reports.items():
                        mem = report.memory
                        for r, (held, qs, load) in enumerate(zip(mem.backbone_bytes_held_all, mem.quant_state_bytes,
                                                                 mem.load_peak_bytes)):
                            print(f"| {model} | {quant} | {ds_config} | {n} | {r} | {held / kib:.1f} KiB | "
                                  f"{held / one:.3f} | {held / mem.backbone_bytes_unquantized:.3f} | "
                                  f"{qs / kib:.1f} KiB | {load / mib:.0f} MiB |", flush=True)
                    summary.append((model, quant, ds_config,
                                    max(reports[2].memory.backbone_bytes_held_all) / one))
    print()
    print("2-rank / 1-rank held bytes per rank (max over ranks):")
    for model, quant, ds_config, ratio in summary:
        print(f"  {model:10s} {quant:12s} {ds_config:14s} {ratio:.3f}")


if __name__ == "__main__":
    main()
