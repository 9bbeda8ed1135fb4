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
            precision: str, options: dict, path: str = "standard") -> dict:
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
        own = {k: v for k, v in options.items() if k in methods.option_names(method)}
        prompt = methods.build(method, prompt_length, backbone.embed_dim, **{**own, **methods.random_start(method)})
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


def run_isolated(settings: dict, method: str, prompt_length: int, path: str) -> dict:
    env = env_without_launcher()
    given = {**{k: settings[k] for k in ("model", "precision", "per_device_train_batch_size", "max_source_length",
                                          "steps")}, **method_settings(settings)}
    cmd = [sys.executable, "-m", "lrpt.trainer.bench.throughput", "--worker", method, str(prompt_length), path,
           *(flag for key, value in given.items() for flag in (f"--{key}", str(value)))]
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


# `lrpt train`'s settings that shape a benchmark configuration, and the bench's defaults for them
RUN_FLAGS = ("model", "precision", "per_device_train_batch_size", "max_source_length", "shared_prefix", "output_dir")
DEFAULTS = {"model": "tiny-t5", "precision": "fp32", "per_device_train_batch_size": 8, "max_source_length": 128,
            "shared_prefix": "auto", "output_dir": "bench", "pool": 2, "methods": "pt,dpt,lopt1,lopt2,lamp,residual",
            "prompt_lengths": "20,50,100,200,400", "steps": 5}


def parser() -> argparse.ArgumentParser:
    from lrpt import methods
    from lrpt.trainer.config import add_run_arguments

    p = argparse.ArgumentParser(prog="lrpt bench", description=__doc__.split("\n")[0],
                                argument_default=argparse.SUPPRESS,
                                epilog="Defaults: " + ", ".join(f"--{k} {v}" for k, v in DEFAULTS.items()) +
                                       ". Method options apply to the methods that take them; max_source_length is "
                                       "the exact number of input tokens of the benchmark's random batch. "
                                       "--shared_prefix auto/true also measures the shared prefix on a decoder-only "
                                       "backbone; false measures the standard path only.")
    p.add_argument("--methods", help="comma-separated methods")
    p.add_argument("--prompt_lengths", "--prompt-lengths", help="comma-separated prompt lengths c")
    p.add_argument("--steps", type=int, help="timed steps (after 2 warm-up steps)")
    add_run_arguments(p, only=RUN_FLAGS + tuple(name for name, _, _ in methods.option_fields()))
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "C", "PATH"), help=argparse.SUPPRESS)
    return p


def settings_from(argv: list[str]) -> dict:
    """The bench's settings: DEFAULTS <- flags; shared_prefix normalised to auto/true/false."""
    from lrpt import methods
    from lrpt.trainer.config import tristate
    from lrpt.trainer.errors import LrptError

    settings = {**DEFAULTS, **vars(parser().parse_args(argv))}
    settings["shared_prefix"] = tristate(settings["shared_prefix"], "--shared_prefix")
    options = method_settings(settings)
    for name in settings["methods"].split(","):
        if name not in methods.available():
            raise LrptError(f"unknown method {name!r}; known methods: {', '.join(methods.available())}")
        try:  # each method with the options it takes, checked as `lrpt train` checks them
            methods.method_options(name, {k: v for k, v in options.items() if k in methods.option_names(name)})
        except ValueError as exc:
            raise LrptError(str(exc)) from None
    return settings


def method_settings(settings: dict) -> dict:
    from lrpt import methods

    return {name: settings[name] for name, _, f in methods.option_fields() if settings.get(name, f.default) != f.default}


def main(argv: list[str]) -> int:
    settings = settings_from(argv)
    batch, seq_len = settings["per_device_train_batch_size"], settings["max_source_length"]
    if "worker" in settings:
        method, c, path = settings["worker"]
        print(json.dumps(measure(settings["model"], method, int(c), batch, seq_len, settings["steps"],
                                 settings["precision"], method_settings(settings), path)))
        return 0
    from tqdm.auto import tqdm

    from lrpt.trainer.backbone import resolve_config
    from lrpt.trainer.errors import LrptError

    lengths = [int(x) for x in settings["prompt_lengths"].split(",")]
    names = [m.strip() for m in settings["methods"].split(",") if m.strip()]
    paths = ["standard"]
    decoder_only = not resolve_config(settings["model"]).is_encoder_decoder
    if settings["shared_prefix"] == "true" and not decoder_only:
        raise LrptError("--shared_prefix true: an encoder-decoder backbone has no shared prefix; use auto or false")
    if settings["shared_prefix"] != "false" and decoder_only:
        paths.append("shared_prefix")
    plan = [("peft", c, "standard") for c in lengths] + [(m, c, p) for c in lengths for m in names for p in paths]
    plan.sort(key=lambda item: item[1])  # one prompt length after the other
    rows = [run_isolated(settings, *item) for item in tqdm(plan, desc="bench", unit="config")]
    baseline = {r["prompt_length"]: r for r in rows if r["method"] == "peft"}
    standard = {(r["method"], r["prompt_length"]): r for r in rows if r["path"] != "shared_prefix"}
    for r in rows:
        base = baseline[r["prompt_length"]]
        r["peak_ratio_vs_peft"] = r["peak_bytes"] / base["peak_bytes"]
        r["throughput_ratio_vs_peft"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["step_time_ratio_vs_peft"] = r["step_time_p50"] / base["step_time_p50"]
        # the same work in both paths, so the throughput ratio is the inverse step-time ratio
        r["throughput_ratio_vs_standard"] = standard[r["method"], r["prompt_length"]]["step_time_p50"] / r["step_time_p50"]
    out = Path(settings["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "bench.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out)
    print(f"{settings['model']}, batch {batch} x {seq_len}, {settings['precision']}, "
          f"peak measured by: {rows[0]['measured_by']}")
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
