"""`lrpt bench`: methods × prompt lengths on one backbone and batch shape, against HF peft.

Each configuration runs in a fresh process, so its peak memory is its own (on CPU the peak RSS
of a process can only grow). Every configuration trains the prompt with a plain loop (forward,
backward, AdamW) on a fixed random batch; the baseline is peft's PromptTuningConfig (c virtual
tokens, encoder only for T5) on the same backbone, batch and precision, with the same loop.
On a decoder-only backbone every lrpt method is also measured with `--shared_prefix` (the prompt
run once per step, its keys/values shared by the batch): those rows have path "shared_prefix"
and the ratio shared/standard in `throughput_ratio_vs_standard`.
Writes bench.csv (with lrpt/peft ratios per row), memory.png and throughput.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lrpt.trainer.distributed import env_without_launcher


def measure(model: str, method: str, prompt_length: int, batch: int, seq_len: int, steps: int,
            precision: str, lamp_pool: int, path: str = "standard") -> dict:
    """One configuration, in this process: seconds per step (after 2 warm-up steps) and peak memory."""
    from lrpt import methods
    from lrpt.trainer.backbone import load_backbone
    from lrpt.trainer.meter import peak_memory
    from lrpt.trainer.prompted import PromptedModel

    torch.manual_seed(0)
    backbone = load_backbone(model, precision)
    net = backbone.model.train()
    ids = torch.randint(3, min(250, net.config.vocab_size), (batch, seq_len))
    mask = torch.ones_like(ids)
    if backbone.is_encoder_decoder:
        labels = torch.randint(3, min(250, net.config.vocab_size), (batch, max(1, seq_len // 8)))
    else:
        labels = ids.clone()
        labels[:, : seq_len - seq_len // 4] = -100
    if method == "peft":
        from peft import PromptTuningConfig, get_peft_model

        task = "SEQ_2_SEQ_LM" if backbone.is_encoder_decoder else "CAUSAL_LM"
        net = get_peft_model(net, PromptTuningConfig(task_type=task, num_virtual_tokens=prompt_length,
                                                     num_transformer_submodules=1))
        params = [p for p in net.parameters() if p.requires_grad]
        output_length = prompt_length

        def loss():
            return net(input_ids=ids, attention_mask=mask, labels=labels).loss
    else:
        options = {"pool": lamp_pool} if method == "lamp" else {}
        init = "random" if "init" in methods.accepted_kwargs(method) else None
        prompt = methods.build(method, prompt_length, backbone.embed_dim, init=init, **options)
        model_ = PromptedModel(net, prompt, backbone.is_encoder_decoder, shared_prefix=path == "shared_prefix")
        params = list(prompt.parameters())
        output_length = prompt.output_length

        def loss():
            return model_(ids, mask, labels=labels).loss
    optimizer = torch.optim.AdamW(params, lr=0.3)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    p50 = statistics.median(times)
    tokens = batch * (seq_len + output_length + (labels.shape[1] if backbone.is_encoder_decoder else 0))
    return {"method": method, "path": "peft" if method == "peft" else path, "prompt_length": prompt_length,
            "prompt_tokens": output_length,
            "trainable_params": sum(p.numel() for p in params), "step_time_p50": p50,
            "samples_per_s": batch / p50, "tokens_per_s": tokens / p50, **peak_memory()}


def run_isolated(args: argparse.Namespace, method: str, prompt_length: int, path: str) -> dict:
    env = env_without_launcher()
    cmd = [sys.executable, "-m", "lrpt.trainer.bench.throughput", "--worker", method, str(prompt_length), path, "--model", args.model,
           "--batch", str(args.batch), "--seq_len", str(args.seq_len), "--steps", str(args.steps),
           "--precision", args.precision, "--lamp_pool", str(args.lamp_pool)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {method} c={prompt_length} ({path}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, ylabel, name in (("peak_bytes", "peak memory (MiB)", "memory.png"),
                              ("tokens_per_s", "tokens/s (prompt + input)", "throughput.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, path in dict.fromkeys((r["method"], r["path"]) for r in rows):
            mine = [r for r in rows if r["method"] == method and r["path"] == path]
            scale = 2 ** 20 if key == "peak_bytes" else 1
            ax.plot([r["prompt_length"] for r in mine], [r[key] / scale for r in mine], marker="o",
                    linestyle={"peft": "--", "shared_prefix": ":"}.get(path, "-"),
                    label=method if path != "shared_prefix" else f"{method} (shared prefix)")
        ax.set(xlabel="prompt length c", ylabel=ylabel, title=f"{ylabel} vs prompt length")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrpt bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-t5")
    p.add_argument("--methods", default="pt,dpt,lopt1,lopt2,lamp,residual")
    p.add_argument("--prompt_lengths", "--prompt-lengths", default="20,50,100,200,400")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", "--seq-len", type=int, default=128, help="input tokens per example")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--lamp_pool", "--lamp-pool", type=int, default=2, help="LAMP's pooling block p in the sweep")
    p.add_argument("--shared_prefix", "--shared-prefix", default="auto", choices=("auto", "off"),
                   help="decoder-only backbones: also measure each method with --shared_prefix (auto) or not (off)")
    p.add_argument("--output_dir", "--output-dir", default="bench")
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "C", "PATH"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        method, c, path = args.worker
        print(json.dumps(measure(args.model, method, int(c), args.batch, args.seq_len, args.steps, args.precision,
                                 args.lamp_pool, path)))
        return 0
    from tqdm.auto import tqdm

    from lrpt.trainer.backbone import resolve_config

    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    paths = ["standard"]
    if args.shared_prefix == "auto" and not resolve_config(args.model).is_encoder_decoder:
        paths.append("shared_prefix")
    plan = [("peft", c, "standard") for c in lengths] + [(m, c, p) for c in lengths for m in names for p in paths]
    plan.sort(key=lambda item: item[1])  # one prompt length after the other
    rows = [run_isolated(args, *item) for item in tqdm(plan, desc="bench", unit="config")]
    baseline = {r["prompt_length"]: r for r in rows if r["method"] == "peft"}
    standard = {(r["method"], r["prompt_length"]): r for r in rows if r["path"] != "shared_prefix"}
    for r in rows:
        base = baseline[r["prompt_length"]]
        r["peak_ratio_vs_peft"] = r["peak_bytes"] / base["peak_bytes"]
        r["throughput_ratio_vs_peft"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["step_time_ratio_vs_peft"] = r["step_time_p50"] / base["step_time_p50"]
        # the same work in both paths, so the throughput ratio is the inverse step-time ratio
        r["throughput_ratio_vs_standard"] = standard[r["method"], r["prompt_length"]]["step_time_p50"] / r["step_time_p50"]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "bench.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out)
    print(f"{args.model}, batch {args.batch} x {args.seq_len}, {args.precision}, peak measured by: {rows[0]['measured_by']}")
    print("| method | path | c | prompt tokens | trainable | s/step | tokens/s | peak MiB | time/peft | peak/peft "
          "| throughput vs peft | vs standard |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['path']} | {r['prompt_length']} | {r['prompt_tokens']} | {r['trainable_params']:,} | "
              f"{r['step_time_p50']:.4f} | {r['tokens_per_s']:.0f} | {r['peak_bytes'] / 2**20:.0f} | "
              f"{r['step_time_ratio_vs_peft']:.2f} | {r['peak_ratio_vs_peft']:.2f} | "
              f"{r['throughput_ratio_vs_peft']:.2f} | {r['throughput_ratio_vs_standard']:.2f} |")
    print(f"wrote {out / 'bench.csv'}, {out / 'memory.png'}, {out / 'throughput.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
