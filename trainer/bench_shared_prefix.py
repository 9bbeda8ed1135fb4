"""Benchmark: training-step throughput of --shared_prefix vs the standard path vs HF peft, in one run.

    python -m trainer.bench_shared_prefix --width 512 --layers 8 --batch 8 --input_len 128

A random LLaMA-shaped backbone (fp32), vanilla prompt tuning (`pt`) so that peft's
PromptTuningConfig trains the same thing; each step is forward + backward + AdamW on the prompt.
"""
from __future__ import annotations

import argparse
import time

import torch


def time_steps(step, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input_len", type=int, default=128)
    parser.add_argument("--prompt_lengths", default="20,100,400")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    import methods
    from peft import PromptTuningConfig, get_peft_model
    from trainer.presets import build_preset
    from trainer.prompted import PromptedModel

    torch.manual_seed(0)
    backbone, _ = build_preset("tiny-llama", width=args.width, layers=args.layers)
    backbone.requires_grad_(False).train()
    n_params = sum(p.numel() for p in backbone.parameters())
    ids = torch.randint(3, 250, (args.batch, args.input_len))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, : args.input_len // 2] = -100
    print(f"LLaMA-shaped random backbone: width {args.width}, {args.layers} layers, {n_params / 1e6:.1f}M params, fp32; "
          f"batch {args.batch} x {args.input_len} input tokens; {torch.get_num_threads()} threads")
    print("| c | standard s/step | shared s/step | peft s/step | shared/standard throughput | shared/peft | standard/peft |")
    print("|---|---|---|---|---|---|---|")
    for c in (int(x) for x in args.prompt_lengths.split(",")):
        prompt = methods.build("pt", c, args.width, init="random", generator=torch.Generator().manual_seed(0))
        times = {}
        for shared in (False, True):
            model = PromptedModel(backbone, prompt, False, shared_prefix=shared)
            opt = torch.optim.AdamW(prompt.parameters(), lr=0.3)

            def step():
                opt.zero_grad()
                model(ids, mask, labels=labels).loss.backward()
                opt.step()
            times["shared" if shared else "standard"] = time_steps(step, args.steps)
        peft_model = get_peft_model(backbone, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=c))
        peft_opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.3)

        def peft_step():
            peft_opt.zero_grad()
            peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            peft_opt.step()
        times["peft"] = time_steps(peft_step, args.steps)
        backbone = peft_model.unload() if hasattr(peft_model, "unload") else peft_model.base_model
        backbone.requires_grad_(False)
        s, sh, pf = times["standard"], times["shared"], times["peft"]
        print(f"| {c} | {s:.3f} | {sh:.3f} | {pf:.3f} | {s / sh:.2f} | {pf / sh:.2f} | {pf / s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
