"""Benchmark: `lrpt plan`'s predicted per-rank peak against the peak measured in a real run, in one go.

    python -m lrpt.trainer.bench.planner                      # tiny and ~100M T5 and LLaMA, ZeRO-0 x1 and ZeRO-3 x2

Each case saves a random backbone, launches `deepspeed --num_gpus N --module lrpt.trainer.bench.planner` (the
trainer's own `setup`: backbone load, ZeRO-3 partitioning, deepspeed.initialize) and trains a few
steps on a fixed random batch of the planned shape. The measured peak is what PyTorch's allocator
handed out, from torch.profiler's allocation events (live bytes over time, max): on CPU the
same quantity `torch.cuda.max_memory_allocated` reports on a GPU, which is what the planner
predicts. On a GPU the worker reads max_memory_allocated directly.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ..config.ds_config import shipped
from ..measure.meter import AllocationPeak


def worker(out: Path, flags: list[str], batch: int, seq_len: int, target_len: int, steps: int,
           deepspeed_linear: bool = False, fused: int = 1) -> None:
    """One rank: lrpt's own setup, then `steps` steps on a random batch of the planned shape; with `fused`
    > 1, that many runs of these flags trained fused (train.fused), each on such a batch."""
    import lrpt.trainer  # noqa: F401  (DS_ACCELERATOR before deepspeed)
    import torch

    from ..runtime import distributed
    from ..train.fused import fused_backward

    cuda = torch.cuda.is_available()
    with AllocationPeak() as peak:
        runs = fused_sessions(flags, fused) if fused > 1 else [one_session(flags, deepspeed_linear)]
        load = torch.cuda.max_memory_allocated() if cuda else None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        peak.mark()
        batch_ = random_batch(runs[0], batch, seq_len, target_len)
        for _ in range(steps):
            if fused > 1:
                fused_backward(runs, [batch_] * fused)
            else:
                runs[0].engine.backward(runs[0].engine(**batch_).loss)
            for run in runs:
                run.engine.step()
    rank = distributed.rank()
    result = {"rank": rank, "world_size": distributed.world_size(),
              "measured_peak": torch.cuda.max_memory_allocated() if cuda else peak.after_mark,
              "measured_load_peak": load if cuda else peak.before_mark,
              "measured_by": ("torch.cuda.max_memory_allocated" if cuda
                              else "torch.profiler allocation events (CPU allocator)")}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def one_session(flags: list[str], deepspeed_linear: bool):
    import torch

    from ..config.run_config import load_config
    from ..train.loop import setup

    run = setup(load_config(flags))
    if deepspeed_linear and run.stage == 3:  # for comparison: DeepSpeed's linear, which saves inputs
        from deepspeed.runtime.zero.linear import zero3_linear_wrap

        torch.nn.functional.linear = zero3_linear_wrap
    run.engine.train()
    return run


def fused_sessions(flags: list[str], count: int) -> list:
    """`count` runs of these flags (seeds 0, 1, ...; each in its own directory) on one backbone, as
    `lrpt sweep --fuse` builds them."""
    from ..config.run_config import load_config
    from ..train.loop import prepare, setup_group

    out = Path(flags[flags.index("--output_dir") + 1])
    preps = [prepare(load_config([*flags, "--seed", str(k), "--output_dir", str(out / f"run{k}")]))
             for k in range(count)]
    runs, frozen = setup_group(preps, fused=True)
    frozen.train()
    for run in runs:
        run.engine.train()
    runs[0].keep_alive = (runs[0].keep_alive, frozen)  # the backbone's engine lives as long as its runs
    return runs


def random_batch(run, batch: int, seq_len: int, target_len: int) -> dict:
    """A fixed random batch of the planned shape, its last row partly padded (as real batches are)."""
    import torch

    vocab = run.backbone.model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(250, vocab), (batch, seq_len), generator=gen)
    if run.backbone.is_encoder_decoder:
        labels = torch.randint(3, min(250, vocab), (batch, target_len), generator=gen)
    else:
        labels = ids.clone()
        labels[:, : seq_len // 2] = -100
    mask = torch.ones_like(ids)
    mask[-1, -seq_len // 4:] = 0
    device = run.engine.device
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


CASES = [  # name, preset, sizes
    ("tiny-t5", "tiny-t5", {}),
    ("tiny-llama", "tiny-llama", {}),
    ("t5-95M", "tiny-t5", {"width": 768, "layers": 8}),
    ("llama-95M", "tiny-llama", {"width": 1024, "layers": 10}),
]


VARIANTS = {"noreuse": ("stage3_max_reuse_distance", 0),   # release every gathered layer after use
            "torchlinear": ("memory_efficient_linear", False)}  # torch's linear instead of ZeRO-3's


def ds_config_file(zero: int, variants: list[str], out: Path) -> str:
    """lrpt's zero<N>.json, or a copy with the named VARIANTS applied to its zero_optimization."""
    path = Path(shipped(f"zero{zero}"))
    if not variants:
        return str(path)
    config = json.loads(path.read_text())
    for name in variants:
        key, value = VARIANTS[name]
        config["zero_optimization"][key] = value
    out.mkdir(parents=True, exist_ok=True)
    (out / "ds.json").write_text(json.dumps(config))
    return str(out / "ds.json")


def measure(model_dir: str, ranks: int, ds_config: str, args, out: Path) -> list[dict]:
    from ..runtime.distributed import env_without_launcher, free_port

    extra = (["--gradient_checkpointing", "true"] if getattr(args, "grad_ckpt", False) else []) + (
        [f"--load_in_{args.quant}", "true"] if getattr(args, "quant", "none") != "none" else [])
    flags = [*extra, "--model", model_dir, "--deepspeed", ds_config,
             "--output_dir", str(out / "run"), "--per_device_train_batch_size", str(args.batch),
             "--method", args.method, "--prompt_length", str(args.prompt_length), "--progress", "false",
             "--shared_prefix", "false"]  # the planner plans the standard path (an upper bound of the shared one)
    env = env_without_launcher()
    import torch

    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
           "--module", "lrpt.trainer.bench.planner",
           "--worker", str(out), "--batch", str(args.batch), "--seq_len", str(args.seq_len),
           "--target_len", str(args.target_len), "--steps", str(args.steps),
           *(["--deepspeed_linear"] if getattr(args, "deepspeed_linear", False) else []), "--", *flags]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path.cwd())
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(c[0] for c in CASES))
    p.add_argument("--setups", default="0x1,3x2", help="ZeRO stage x ranks, comma separated, with "
                   "variants of the DeepSpeed config: 3x2+noreuse (stage3_max_reuse_distance 0), 3x2+torchlinear "
                   "(memory_efficient_linear off), 3x2+dslinear (DeepSpeed's linear, which saves every input)")
    p.add_argument("--method", default="dpt")
    p.add_argument("--prompt_length", type=int, default=20)
    p.add_argument("--per_device_train_batch_size", "--batch", dest="batch", type=int, default=4)
    p.add_argument("--max_source_length", "--seq_len", dest="seq_len", type=int, default=128,
                   help="input tokens of the random batch")
    p.add_argument("--max_target_length", "--target_len", dest="target_len", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gradient_checkpointing", "--grad_ckpt", dest="grad_ckpt", action="store_true",
                   help="gradient checkpointing in every case")
    p.add_argument("--quant", default="none", choices=("none", "8bit", "4bit"), help="quantized backbones")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--deepspeed_linear", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        flags = rest[rest.index("--") + 1:] if "--" in rest else rest
        from ..runtime.distributed import without_launcher_args

        worker(Path(args.worker), without_launcher_args(flags), args.batch, args.seq_len, args.target_len, args.steps,
               args.deepspeed_linear)
        return 0

    from ..backbone.presets import save_preset
    from ..measure.plan import PlanSpec, plan

    print("| backbone | setup | ranks | rank | predicted peak | measured peak | predicted/measured | "
          "predicted load | measured load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, preset, sizes in (c for c in CASES if c[0] in args.cases.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = save_preset(preset, str(Path(tmp) / name), **sizes)
            for setup in args.setups.split(","):
                shape, *variants = setup.split("+")
                zero, ranks = (int(x) for x in shape.split("x"))
                out = Path(tmp) / setup
                args.deepspeed_linear = "dslinear" in variants
                ds_config = ds_config_file(zero, [v for v in variants if v != "dslinear"], out)
                predicted = plan(PlanSpec(model=model_dir, zero=zero, gpus=ranks, method=args.method,
                                          prompt_length=args.prompt_length, batch=args.batch, seq_len=args.seq_len,
                                          target_len=args.target_len, precision="fp32", ds_config=ds_config,
                                          grad_ckpt=args.grad_ckpt, quant=args.quant))
                for r in measure(model_dir, ranks, ds_config, args, out):
                    print(f"| {name} | {setup} | {ranks} | {r['rank']} | {predicted.train_peak / 2**20:.1f} MiB | "
                          f"{r['measured_peak'] / 2**20:.1f} MiB | {predicted.train_peak / r['measured_peak']:.3f} | "
                          f"{predicted.load_peak / 2**20:.1f} MiB | {r['measured_load_peak'] / 2**20:.1f} MiB |",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
