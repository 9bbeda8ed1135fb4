"""Does a trained prompt work? Held-out accuracy and training loss against steps on a real backbone, for each
method over a few seeds, next to peft's PromptTuning trained by the HF Trainer on the same rows from the same
initial prompt.

Every lrpt run is `lrpt train` in a process of its own (`--eval_steps` gives the accuracy curve, the untrained
prompt's accuracy is step 0). The peft run takes the pt run's tokenized rows and initial prompt, trains
peft's prompt with the HF Trainer (AdamW, the same learning rate, warm-up, decay, weight decay, clipping,
batch and steps; the Trainer's own shuffling) and is scored by lrpt's rank classification after copying its
prompt into lrpt's pt module, the one step both share (`lrpt export --to peft` is tested to give equal logits).
Writes learning.csv (a row per run and evaluation), learning.png and prints a markdown table.

    python -m lrpt.trainer.bench.learning --model smollm2-135m --seeds 1,2,3 --max_steps 120 --eval_steps 40
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path

from ..rundir.report import Report
from ..runtime.distributed import env_without_launcher

DEFAULTS = {"model": "smollm2-135m", "task": "boolq", "data_dir": None, "methods": "pt,dpt,lopt1,lopt2,lamp,residual",
            "seeds": "1,2,3", "max_steps": 120, "eval_steps": 40, "learning_rate": "0.01", "prompt_length": 20,
            "batch": 8, "peft": True, "output_dir": "bench-learning"}


def parser() -> argparse.ArgumentParser:
    from ..config.run_config import _parse_bool

    p = argparse.ArgumentParser(prog="python -m lrpt.trainer.bench.learning", description=__doc__.split("\n")[0],
                                epilog="Arguments after -- go to every `lrpt train` (a method's options, --init).")
    for name, value in DEFAULTS.items():
        kind = _parse_bool if isinstance(value, bool) else type(value) if value is not None else str
        p.add_argument(f"--{name}", type=kind, default=value)
    p.epilog += (" --learning_rate takes one rate, or METHOD=RATE,... with a DEFAULT entry for the rest "
                 "(0.01 or pt=0.01,dpt=0.3). --peft false skips the peft run.")
    return p


def learning_rates(spec: str, names: list[str]) -> dict[str, float]:
    """One learning rate for every method, or METHOD=RATE pairs (`default=` for the methods not named)."""
    if "=" not in spec:
        return {name: float(spec) for name in names}
    pairs = dict(item.split("=", 1) for item in spec.split(","))
    missing = [n for n in names if n not in pairs and "default" not in pairs]
    if missing:
        raise SystemExit(f"--learning_rate names no rate for {', '.join(missing)}: add them or default=RATE")
    return {name: float(pairs.get(name, pairs.get("default"))) for name in names}


def train_flags(args, method: str, seed: int, rate: float, out: Path, extra: list[str]) -> list[str]:
    flags = {"model": args.model, "task": args.task, "method": method, "seed": seed, "learning_rate": rate,
             "max_steps": args.max_steps, "eval_steps": args.eval_steps, "prompt_length": args.prompt_length,
             "per_device_train_batch_size": args.batch, "decoding": "rank", "output_dir": out,
             "overwrite_output_dir": "true", "progress": "false", "report_to": "none", "eval_untrained": "true"}
    if args.data_dir:
        flags["data_dir"] = args.data_dir
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))] + extra


def lrpt_run(args, method: str, seed: int, rate: float, extra: list[str]) -> list[dict]:
    """`lrpt train` in its own process; its accuracy and loss by step (step 0: the untrained prompt)."""
    out = Path(args.output_dir) / f"{method}-s{seed}"
    cmd = [sys.executable, "-m", "lrpt.trainer.cli.main", "train", *train_flags(args, method, seed, rate, out, extra)]
    done = subprocess.run(cmd, env=env_without_launcher(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed:\n{done.stderr[-2000:]}")
    report = Report.read(out)
    accuracy = {0: report.metrics_untrained["accuracy"]}
    accuracy.update({h["step"]: h["accuracy"] for h in report.train.eval_history if h["split"] == "val"})
    accuracy[report.train.steps] = report.metrics["accuracy"]
    return rows_of(method, seed, rate, report.train.loss_curve, accuracy)


def rows_of(method: str, seed: int, rate: float, losses: list[float], accuracy: dict[int, float]) -> list[dict]:
    return [{"method": method, "seed": seed, "learning_rate": rate, "step": step,
             "loss": losses[step - 1] if step else None, "accuracy": accuracy.get(step)}
            for step in range(len(losses) + 1) if step in accuracy or step]


def peft_run(args, seed: int, rate: float, extra: list[str]) -> list[dict]:
    """peft's PromptTuning under the HF Trainer on the pt run's rows, from its initial prompt."""
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from ..config.run_config import load_config
    from ..rundir import lock as run_lock
    from ..train.data import collate
    from ..train.evaluate import evaluate
    from ..train.loop import setup

    out = Path(args.output_dir) / f"peft-s{seed}"
    cfg = load_config(train_flags(args, "pt", seed, rate, out, extra))
    run = setup(cfg)  # lrpt's rows, backbone and initial prompt; its engine stays unused
    try:
        net = run.backbone.model
        model = get_peft_model(net, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.prompt_length))
        table = model.prompt_encoder["default"].embedding.weight
        with torch.no_grad():
            table.copy_(run.prompt())

        def accuracy() -> float:
            with torch.no_grad():
                run.prompt.prompt.copy_(table)
            return evaluate(run.model, run.eval_rows, run.task, run.encoder, "rank", cfg.per_device_eval_batch_size,
                            False, progress=False)["accuracy"]

        scores = {0: accuracy()}

        class Scores(TrainerCallback):
            def on_step_end(self, targs, state, control, **kwargs):
                if state.global_step % args.eval_steps == 0 or state.global_step == args.max_steps:
                    scores[state.global_step] = accuracy()

        targs = TrainingArguments(
            output_dir=str(out / "hf"), max_steps=args.max_steps, per_device_train_batch_size=args.batch,
            learning_rate=rate, weight_decay=cfg.weight_decay,
            warmup_steps=math.ceil(cfg.warmup_ratio * args.max_steps),  # lrpt's rounding of the warm-up
            max_grad_norm=cfg.max_grad_norm, lr_scheduler_type="linear", optim="adamw_torch", seed=seed,
            logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
            remove_unused_columns=False, use_cpu=not torch.cuda.is_available())
        pad = run.backbone.tokenizer.pad_token_id
        trainer = Trainer(model=model, args=targs, train_dataset=run.train_rows,
                          data_collator=lambda rows: collate(rows, pad), callbacks=[Scores()])
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    finally:
        run_lock.release(out)
    return rows_of("peft-pt", seed, rate, losses, scores)


def summary(rows: list[dict]) -> list[dict]:
    """Per method: untrained and final held-out accuracy over seeds, and the last 10 steps' mean loss."""
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = {}
        for r in rows:
            if r["method"] == method:
                runs.setdefault(r["seed"], []).append(r)
        first = [min((r for r in rs if r["accuracy"] is not None), key=lambda r: r["step"])["accuracy"]
                 for rs in runs.values()]
        final = [max((r for r in rs if r["accuracy"] is not None), key=lambda r: r["step"])["accuracy"]
                 for rs in runs.values()]
        tail = [statistics.mean([r["loss"] for r in rs if r["loss"] is not None][-10:]) for rs in runs.values()]
        rate = next(r["learning_rate"] for r in rows if r["method"] == method)
        table.append({"method": method, "learning_rate": rate,
                      "seeds": len(runs), "untrained": statistics.mean(first), "final": statistics.mean(final),
                      "final_std": statistics.stdev(final) if len(final) > 1 else 0.0,
                      "final_min": min(final), "final_max": max(final), "loss_last10": statistics.mean(tail)})
    return table


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        color = f"C{i}"
        for j, seed in enumerate(dict.fromkeys(r["seed"] for r in rows if r["method"] == method)):
            mine = [r for r in rows if r["method"] == method and r["seed"] == seed]
            scored = [r for r in mine if r["accuracy"] is not None]
            label = method if j == 0 else None
            acc.plot([r["step"] for r in scored], [r["accuracy"] for r in scored], color=color, marker="o",
                     markersize=3, alpha=0.8, label=label)
            trained = [r for r in mine if r["loss"] is not None]
            loss.plot([r["step"] for r in trained], [r["loss"] for r in trained], color=color, alpha=0.5, label=label)
    acc.set(xlabel="step", ylabel="held-out accuracy", title="held-out accuracy (step 0: untrained prompt)")
    loss.set(xlabel="step", ylabel="training loss per label token", yscale="log", title="training loss")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "learning.png", dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    from tqdm.auto import tqdm

    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser().parse_args(own)
    names = [m for m in args.methods.split(",") if m]
    rates = learning_rates(args.learning_rate, names + (["pt"] if args.peft else []))
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(m, s) for m in names for s in seeds] + ([("peft-pt", s) for s in seeds] if args.peft else [])
    rows = []
    for method, seed in tqdm(plan, desc="learning", unit="run"):
        rows += (peft_run(args, seed, rates["pt"], extra) if method == "peft-pt"
                 else lrpt_run(args, method, seed, rates[method], extra))
    with (out / "learning.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    title = (f"{args.model}, {args.task} ({args.data_dir or 'bundled demo data'}), c = {args.prompt_length}, "
             f"batch {args.batch}, {args.max_steps} steps, seeds {args.seeds} {' '.join(extra)}")
    plot(rows, out, title)
    print(title)
    print("| method | lr | seeds | untrained acc | final acc (mean ± std) | min - max | loss, last 10 steps |")
    print("|---|---|---|---|---|---|---|")
    for r in summary(rows):
        print(f"| {r['method']} | {r['learning_rate']:g} | {r['seeds']} | {r['untrained']:.3f} | "
              f"{r['final']:.3f} ± {r['final_std']:.3f} | {r['final_min']:.3f} - {r['final_max']:.3f} | "
              f"{r['loss_last10']:.3f} |")
    print(f"wrote {out / 'learning.csv'}, {out / 'learning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
