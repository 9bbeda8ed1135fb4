"""Benchmark: loading a quantized backbone sharded (backbone.quant_load) vs whole, 1 vs 2 ranks, in one run.

    python -m lrpt.trainer.bench.quant_load                  # ~95M-parameter LLaMA-shaped backbone, CPU

Saves a random LLaMA-shaped backbone (tiny-llama's shape at --width/--layers: 1024 x 10 is ~95M
parameters) as a sharded safetensors checkpoint, then for 8-bit and 4-bit (nf4) x --quantized_load
sharded / whole x 1 and 2 ranks launches `deepspeed --num_gpus N --module lrpt.trainer.bench.quant_load`
(lrpt's own `setup`, then a few DPT steps on the bundled demo data, no evaluation), each in a fresh
launch. It prints each rank's load peak (the allocator's: `memory.load_peak_bytes`) and load wall
time (from the start of the load until `deepspeed.initialize` has sharded the backbone, which the
whole path does there), the sharded/whole ratios, the 2-rank/1-rank ratios, and each peak against the goal
"1/N of the quantized backbone + the largest single tensor" (that tensor as stored in the checkpoint).
Each rank gets cores / ranks threads (OMP_NUM_THREADS), so that 2 ranks do not oversubscribe the cores;
each configuration is launched once for the peaks (the allocator's, the same in every launch) and --repeats
times for the load time, without the allocator's measurement (torch.profiler recording every allocation
slows the load it measures, and the sharded path, with more and smaller allocations, more), every other
pass over the configurations in reverse order; the fastest load is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTS = {"8bit": ["--load_in_8bit"], "4bit-nf4": ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4"]}
MIB = 2 ** 20


class _TimedOnly:
    """`LoadPeak` less the allocator's measurement: torch.profiler's recording of every allocation costs the load
    time it is part of, and more on the path with more (smaller) allocations. A timed launch uses this."""

    def start(self) -> "_TimedOnly":
        self._start = time.perf_counter()
        return self

    def stop(self) -> dict:
        return {"peak_bytes": None, "measured_by": "not measured (a timed launch)",
                "seconds": time.perf_counter() - self._start}


def worker(out: Path, flags: list[str], steps: int, timed: bool) -> None:
    """One rank: setup (the load), a few steps, its figures in out/rank<r>.json. `timed`: the load timed without
    the allocator's measurement (a separate launch measures the peak)."""
    import lrpt.trainer  # noqa: F401  (DS_ACCELERATOR before deepspeed)

    from ..config.run_config import load_config
    from ..runtime import distributed
    from ..train import loop

    if timed:
        loop.LoadPeak = _TimedOnly  # this process only: the benchmark's own launch
    run = loop.setup(load_config(flags))
    run.engine.train()
    batch = next(run.batches(epoch=0))
    losses = []
    for _ in range(steps):
        loss = run.engine(**batch).loss
        run.engine.backward(loss)
        run.engine.step()
        losses.append(loss.item())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps({
        "load_peak_bytes": run.load_peak_bytes, "measured_by": run.load_peak_measured_by,
        "load_seconds": run.load_seconds, "losses": losses}))


def launch(model_dir: str, quant: str, load: str, ranks: int, out: Path, steps: int, timed: bool) -> list[dict]:
    from ..config.ds_config import shipped
    from ..runtime.distributed import env_without_launcher, free_port

    env = env_without_launcher()
    env.setdefault("DS_ACCELERATOR", "cpu")
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ranks))
    flags = ["--model", model_dir, "--deepspeed", shipped("zero3"), "--output_dir", str(out / "run"),
             "--method", "dpt", "--prompt_length", "8", "--per_device_train_batch_size", "2",
             "--max_source_length", "64", "--warmup_ratio", "0", "--progress", "false", "--shared_prefix", "false",
             *QUANTS[quant], "--quantized_load", load]
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
           "--module", "lrpt.trainer.bench.quant_load", "--worker", str(out), "--steps", str(steps),
           *(["--timed"] if timed else []), "--", *flags]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{quant} {load} x{ranks} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def goal_bytes(model_dir: str, quant: str, ranks: int) -> tuple[float, int]:
    """(1/N of the quantized backbone as held + the largest tensor as the checkpoint stores it, that tensor)."""
    from ..measure.plan import model_tensors, stored_bytes

    q = "8bit" if quant == "8bit" else "4bit"
    tensors = model_tensors(model_dir, q)
    backbone = sum(sum(stored_bytes(t, q, "fp32", False)) for t in tensors)
    largest = 4 * max(t.numel for t in tensors)  # fp32 checkpoint
    return backbone / ranks + largest, largest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--quants", default=",".join(QUANTS))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="launches per configuration; the fastest load counts")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        flags = rest[rest.index("--") + 1:] if "--" in rest else rest
        from ..runtime import distributed

        worker(Path(args.worker), distributed.without_launcher_args(flags), args.steps, args.timed)
        distributed.shutdown()  # every rank leaves the group before exiting (see distributed.shutdown)
        return 0

    import bitsandbytes
    import deepspeed
    import torch
    import transformers

    from ..backbone.presets import build_preset
    from .quant import machine

    print(f"machine: {machine()}; torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
          f"transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "llama")
        model, tokenizer = build_preset("tiny-llama", width=args.width, layers=args.layers)
        n_params = sum(t.numel() for t in model.parameters())
        model.save_pretrained(model_dir, max_shard_size="100MB")
        tokenizer.save_pretrained(model_dir)
        del model
        files = len(list(Path(model_dir).glob("*.safetensors")))
        print(f"backbone: LLaMA-shaped, width {args.width}, {args.layers} layers, {n_params / 1e6:.1f}M parameters, "
              f"random, fp32, {files} safetensors files + index; ZeRO-3 (ds_configs/zero3.json), DPT c=8, "
              f"{args.steps} steps")
        print("| quantization | load | ranks | rank | load peak | load time | peak / goal | losses |")
        print("|---|---|---|---|---|---|---|---|")
        plan = [(quant, load, ranks) for quant in args.quants.split(",") for load in ("sharded", "whole")
                for ranks in (1, 2)]
        peaks = {key: launch(model_dir, *key, Path(tmp) / "-".join(map(str, key)), args.steps, timed=False)
                 for key in plan}  # the allocator's peaks: the same in every launch
        runs: dict[tuple, list[list[dict]]] = {key: [] for key in plan}
        for i in range(args.repeats):  # every other pass in reverse order: a slow spell hits no one configuration
            for key in plan if i % 2 == 0 else reversed(plan):
                out = Path(tmp) / f"{'-'.join(map(str, key))}-{i}"
                runs[key].append(launch(model_dir, *key, out, args.steps, timed=True))
        figures = {}
        for quant, load, ranks in plan:
            fastest = min(runs[quant, load, ranks], key=lambda rs: max(r["load_seconds"] for r in rs))
            ranks_out = [{**timed, "load_peak_bytes": peak["load_peak_bytes"], "measured_by": peak["measured_by"]}
                         for timed, peak in zip(fastest, peaks[quant, load, ranks])]
            goal, _ = goal_bytes(model_dir, quant, ranks)
            figures[quant, load, ranks] = ranks_out
            for r, res in enumerate(ranks_out):
                print(f"| {quant} | {load} | {ranks} | {r} | {res['load_peak_bytes'] / MIB:.1f} MiB | "
                      f"{res['load_seconds']:.1f} s | {res['load_peak_bytes'] / goal:.3f} | "
                      f"{', '.join(f'{x:.4f}' for x in res['losses'])} |", flush=True)
        print(f"\nload peak measured by: {figures[next(iter(figures))][0]['measured_by']}")
        print("ratios (max over ranks):")
        for quant in args.quants.split(","):
            def peak(load, ranks):
                return max(r["load_peak_bytes"] for r in figures[quant, load, ranks])

            def secs(load, ranks):
                return max(r["load_seconds"] for r in figures[quant, load, ranks])

            goal, largest = goal_bytes(model_dir, quant, 2)
            print(f"  {quant}: 2 ranks sharded/whole: peak {peak('sharded', 2) / peak('whole', 2):.3f}, "
                  f"time {secs('sharded', 2) / secs('whole', 2):.3f}; 1 rank sharded/whole: peak "
                  f"{peak('sharded', 1) / peak('whole', 1):.3f}, time {secs('sharded', 1) / secs('whole', 1):.3f}; "
                  f"sharded 2 ranks/1 rank: peak {peak('sharded', 2) / peak('sharded', 1):.3f}; 2-rank sharded "
                  f"peak / (1/2 quantized backbone + largest tensor {largest / MIB:.1f} MiB) = "
                  f"{peak('sharded', 2) / goal:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
