"""`lrpt bench`: methods × prompt lengths on one backbone and batch shape, against HF peft.

Each configuration runs in a fresh process, so its peak memory is its own (on CPU the peak RSS
of a process can only grow). Every configuration trains the prompt on a fixed random batch in the
loop its users run: lrpt's methods in DeepSpeed's engine as `lrpt train` steps them (its built-in
ZeRO-0 config, or `--deepspeed` with `--ranks` processes through the deepspeed launcher; peak = the
largest rank's). The baseline is peft's PromptTuningConfig (c virtual tokens, encoder only for T5)
on the same backbone (loaded as `lrpt train` loads it: ZeRO-3-sharded, 8-bit / 4-bit, gradient
checkpointing), batch and precision, trained by the HF Trainer in one process (`--baseline plain`:
a bare forward/backward/AdamW loop instead) and by DeepSpeed's engine under `--deepspeed`. On a
decoder-only backbone every lrpt method is also measured with `--shared_prefix` (the prompt once
per micro-batch): those rows have path "shared_prefix" and the ratio
shared/standard in `throughput_ratio_vs_standard`. Every row also times rank classification's
forward (no gradient) per example, `eval_s_per_example` (the fastest of --steps).
Every configuration, peft's included, runs with denormal floats flushed to zero (`--flush_denormal
true`, the default): a random backbone's fp32 gradients hold many, a CPU computes each one up to a
hundred times slower (a GPU at full speed), and how many arise depends on the prompt's starting
values, which differ between peft and lrpt, so unflushed CPU timings compare denormal counts.
With `--repeats R` the whole plan runs R times, every other pass in reverse order, and each
configuration keeps its fastest launch (its highest peak): a shared machine moves one launch's
step time by 10 % or more, and alternating keeps a slow spell from landing on one configuration.
Writes bench.csv (with lrpt/peft ratios per row), memory.png and throughput.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..config.ds_config import DeepSpeedConfig
from ..runtime.distributed import env_without_launcher


def _run_config(settings: dict):
    """The RunConfig a benchmark configuration corresponds to (its backbone, precision, ZeRO, quantization)."""
    from ..config.run_config import RunConfig

    keys = ("model", "precision", "per_device_train_batch_size", "deepspeed", "load_in_8bit", "load_in_4bit",
            "bnb_4bit_quant_type", "gradient_checkpointing")
    return RunConfig(**{k: settings[k] for k in keys if k in settings})


def _load(cfg, ds_config: DeepSpeedConfig | None):
    """The frozen backbone as `lrpt train` loads it (train.loop: sharded under ZeRO-3, quantized layers
    made ZeRO-3-shardable), and the HfDeepSpeedConfig to keep alive."""
    from ..backbone.load import load_run_backbone
    from ..runtime import distributed
    from ..train import loop

    if ds_config is None:
        return load_run_backbone(cfg), None
    return loop.load_frozen(cfg, ds_config, distributed.world_size())


def random_batch(config, batch: int, seq_len: int, is_encoder_decoder: bool) -> dict:
    ids = torch.randint(3, min(250, config.vocab_size), (batch, seq_len))
    if is_encoder_decoder:
        labels = torch.randint(3, min(250, config.vocab_size), (batch, max(1, seq_len // 8)))
    else:
        labels = ids.clone()
        labels[:, : seq_len - seq_len // 4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def measure(settings: dict, method: str, prompt_length: int, path: str = "standard") -> dict:
    """One configuration, in this process (every rank under a launcher): seconds per step after 2
    warm-up steps, peak memory, and rank-classification seconds per example (no gradient)."""
    from ... import methods
    from ..config.ds_config import resolve_ds_config
    from ..measure.meter import peak_memory
    from ..model.prompted import PromptedModel
    from ..runtime import distributed

    if settings["flush_denormal"]:  # before the first parallel region: its threads inherit the mode
        torch.set_flush_denormal(True)
    cfg = _run_config(settings)
    batch_size, seq_len = settings["per_device_train_batch_size"], settings["max_source_length"]
    steps = settings["steps"]
    ds_config, loop = None, loop_of(settings, method)
    if loop == "deepspeed":
        from ..backbone.source import resolve_config

        distributed.init_process_group()
        ds_config = resolve_ds_config(cfg, distributed.world_size(), resolve_config(cfg.model).hidden_size)
    torch.manual_seed(0)
    backbone, keep_alive = _load(cfg, ds_config if cfg.deepspeed else None)
    net = backbone.model.train()
    batch = random_batch(net.config, batch_size, seq_len, backbone.is_encoder_decoder)
    if method == "peft":
        from peft import PromptTuningConfig, get_peft_model

        task = "SEQ_2_SEQ_LM" if backbone.is_encoder_decoder else "CAUSAL_LM"
        model = get_peft_model(net, PromptTuningConfig(task_type=task, num_virtual_tokens=prompt_length,
                                                       num_transformer_submodules=1))
        params = [p for p in model.parameters() if p.requires_grad]
        output_length = prompt_length
    else:
        own = {k: v for k, v in method_settings(settings).items() if k in methods.option_names(method)}
        prompt = methods.build(method, prompt_length, backbone.embed_dim, **{**own, **methods.random_start(method)})
        model = PromptedModel(net, prompt, backbone.is_encoder_decoder, shared_prefix=path == "shared_prefix")
        params = list(prompt.parameters())
        output_length = prompt.output_length
    if loop == "hf_trainer":
        (times, faults), engine = trainer_step_times(model, batch, steps), None
    else:
        step, engine = _stepper(model, params, ds_config)
        for _ in range(2):  # warm-up
            _timed(step, batch)
        faults = minor_faults()
        times = [_timed(step, batch) for _ in range(steps)]
        faults = (minor_faults() - faults) / steps
    evaluation = [_timed(lambda b: _score(model, b), batch) for _ in range(steps + 1)][1:]
    p50 = statistics.median(times)
    tokens = batch_size * (seq_len + output_length + (batch["labels"].shape[1] if backbone.is_encoder_decoder else 0))
    world = distributed.world_size()
    peaks = distributed.gather(peak_memory())
    del keep_alive, engine
    return {"method": method, "path": "peft" if method == "peft" else path, "loop": loop,
            "prompt_length": prompt_length, "prompt_tokens": output_length, "ranks": world,
            "threads": torch.get_num_threads(),
            "flush_denormal": denormals_flushed(),
            "trainable_params": sum(getattr(p, "ds_numel", p.numel()) for p in params), "step_time_p50": p50,
            "step_time_min": min(times),
            # pages the kernel handed the process (first touch of freshly mapped memory) per timed step
            "minor_faults_per_step": faults,
            # rates from the fastest step: least disturbed by whatever else the machine runs
            "samples_per_s": world * batch_size / min(times), "tokens_per_s": world * tokens / min(times),
            "eval_s_per_example": min(evaluation) / batch_size,
            "peak_bytes": max(p["peak_bytes"] for p in peaks), "measured_by": peaks[0]["measured_by"]}


def loop_of(settings: dict, method: str) -> str:
    """The training loop a configuration is timed in: what its users run. lrpt's rows (and peft's under
    --deepspeed) step DeepSpeed's engine, with lrpt's built-in ZeRO-0 config when --deepspeed is not given, as
    `lrpt train` does; peft's rows in one process step the HF Trainer (`--baseline trainer`, the default), or
    the plain loop lrpt's rows once used (`--baseline plain`: forward, backward, AdamW, nothing else)."""
    if method != "peft" or settings.get("deepspeed"):
        return "deepspeed"
    return "hf_trainer" if settings["baseline"] == "trainer" else "plain"


def minor_faults() -> int:
    """Pages the kernel has handed this process on first touch so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def trainer_step_times(model, batch: dict, steps: int) -> tuple[list[float], float]:
    """Seconds per optimizer step of `model` trained by the HF Trainer on `batch`'s rows, repeated: AdamW at
    the same learning rate, no logging, no saving, no evaluation. A step is timed from one step's end to the
    next (data loading and collation included, as a user's run pays them), after 2 warm-up steps; with the
    minor page faults per timed step, counted over the same steps."""
    import tempfile

    from torch.utils.data import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    rows = [{k: v[i] for k, v in batch.items()} for i in range(batch["input_ids"].shape[0])]

    class Repeated(Dataset):
        def __len__(self) -> int:
            return len(rows) * (steps + 2)

        def __getitem__(self, i: int) -> dict:
            return rows[i % len(rows)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append((time.perf_counter(), minor_faults()))

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=len(rows), max_steps=steps + 2,
                                 learning_rate=0.3, optim="adamw_torch", lr_scheduler_type="constant",
                                 logging_strategy="no", save_strategy="no", eval_strategy="no", report_to=[],
                                 disable_tqdm=True, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
                                 remove_unused_columns=False)
        Trainer(model=model, args=args, train_dataset=Repeated(), callbacks=[clock]).train()
    timed = clock.ends[1:]  # from the end of the second warm-up step
    return [b - a for (a, _), (b, _) in zip(timed, timed[1:])], (timed[-1][1] - timed[0][1]) / steps


def denormals_flushed() -> bool:
    """Whether this thread's arithmetic flushes denormal floats: the smallest normal float32 halved is one."""
    tiny = torch.tensor(torch.finfo(torch.float32).tiny)
    return (tiny / 2).item() == 0.0


def _stepper(model, params: list, ds_config: DeepSpeedConfig | None):
    """One training step (forward, backward, AdamW): a plain loop, or DeepSpeed's engine under --deepspeed."""
    optimizer = torch.optim.AdamW(params, lr=0.3)
    if ds_config is None:
        def step(batch: dict) -> None:
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
        return step, None
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config.json)
    if ds_config.stage == 3:
        from ..backbone import zero3_linear

        zero3_linear.install()

    def step(batch: dict) -> None:
        engine.backward(engine(**batch).loss)
        engine.step()
    return step, engine


def _score(model, batch: dict) -> None:
    """Rank classification's work on one batch: each row's label log-likelihood, no gradient."""
    with torch.no_grad():
        if hasattr(model, "label_log_likelihood"):
            model.label_log_likelihood(**batch)
        else:  # peft: the backbone's own forward with its virtual tokens
            model(**batch)


def _timed(fn, batch: dict) -> float:
    start = time.perf_counter()
    fn(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run_isolated(settings: dict, method: str, prompt_length: int, path: str) -> dict:
    """A configuration in a fresh process (its peak memory its own); under --deepspeed through the
    deepspeed launcher with --ranks processes."""
    from ..runtime.distributed import free_port

    env = env_without_launcher()
    given = {k: settings[k] for k in WORKER_FLAGS if k in settings}
    flags = [flag for key, value in {**given, **method_settings(settings)}.items() for flag in (f"--{key}", str(value))]
    worker = ["--worker", method, str(prompt_length), path, *flags]
    if settings.get("deepspeed"):
        # the launcher leaves each rank torch's default of one thread per core: N ranks would oversubscribe
        # the cores N times over (`deepspeed --bind_cores_to_rank` splits them the same way)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // settings["ranks"])))
        launcher = str(Path(sys.executable).parent / "deepspeed")
        cmd = [launcher, "--num_gpus", str(settings["ranks"]), "--master_port", str(free_port()),
               "--module", "lrpt.trainer.bench.throughput", *worker]
    else:
        cmd = [sys.executable, "-m", "lrpt.trainer.bench.throughput", *worker]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {method} c={prompt_length} ({path}) failed:\n{done.stderr[-2000:]}")
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))


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
RUN_FLAGS = ("model", "precision", "per_device_train_batch_size", "max_source_length", "shared_prefix", "output_dir",
             "deepspeed", "load_in_8bit", "load_in_4bit", "bnb_4bit_quant_type", "gradient_checkpointing")
# what a worker process is given (booleans as true/false, which lrpt's flags accept)
WORKER_FLAGS = ("model", "precision", "per_device_train_batch_size", "max_source_length", "steps", "deepspeed",
                "load_in_8bit", "load_in_4bit", "bnb_4bit_quant_type", "gradient_checkpointing", "flush_denormal",
                "baseline")
DEFAULTS = {"model": "smollm2-135m", "precision": "fp32", "per_device_train_batch_size": 8, "max_source_length": 128,
            "shared_prefix": "auto", "output_dir": "bench", "pool": 2, "methods": "pt,dpt,lopt1,lopt2,lamp,residual",
            "prompt_lengths": "20,100,400", "steps": 5, "ranks": 1, "repeats": 1,
            "flush_denormal": True, "baseline": "trainer"}


def parser() -> argparse.ArgumentParser:
    from ... import methods
    from ..config.run_config import _parse_bool, add_run_arguments

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
    p.add_argument("--ranks", type=int, help="processes per configuration under --deepspeed (the deepspeed launcher)")
    p.add_argument("--repeats", type=int, help="passes over every configuration, alternating order; the fastest counts")
    p.add_argument("--baseline", choices=("trainer", "plain"),
                   help="peft's loop in one process: the HF Trainer, or a plain forward/backward/AdamW loop")
    p.add_argument("--flush_denormal", "--flush-denormal", type=_parse_bool,
                   help="flush denormal floats to zero in every configuration (a CPU's slow path; true/false)")
    add_run_arguments(p, only=RUN_FLAGS + tuple(name for name, _, _ in methods.option_fields()))
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "C", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's, to its workers
    return p


def settings_from(argv: list[str]) -> dict:
    """The bench's settings: DEFAULTS <- flags; shared_prefix normalised to auto/true/false."""
    from ... import methods
    from ..config.run_config import tristate
    from ..errors import LrptError

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


def fastest(launches: list[dict]) -> list[dict]:
    """One row per configuration, in first-seen order: its fastest launch's step time, its fastest
    evaluation and its highest peak over the launches."""
    rows: dict[tuple, dict] = {}
    for run in launches:
        key = (run["method"], run["prompt_length"], run["path"])
        best = rows.setdefault(key, run)
        if run["step_time_min"] < best["step_time_min"]:
            rows[key] = best = {**run, "eval_s_per_example": best["eval_s_per_example"],
                                "peak_bytes": best["peak_bytes"]}
        best["eval_s_per_example"] = min(best["eval_s_per_example"], run["eval_s_per_example"])
        best["peak_bytes"] = max(best["peak_bytes"], run["peak_bytes"])
    return list(rows.values())


def method_settings(settings: dict) -> dict:
    from ... import methods

    return {name: settings[name] for name, _, f in methods.option_fields()
            if settings.get(name, f.default) != f.default}


def main(argv: list[str]) -> int:
    settings = settings_from(argv)
    batch, seq_len = settings["per_device_train_batch_size"], settings["max_source_length"]
    if "worker" in settings:
        from ..runtime import distributed

        method, c, path = settings["worker"]
        row = measure(settings, method, int(c), path)
        if distributed.is_main():
            print(json.dumps(row), flush=True)
        distributed.shutdown()
        return 0
    from tqdm.auto import tqdm

    from ..backbone.source import resolve_config
    from ..errors import LrptError

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
    passes = [plan if i % 2 == 0 else plan[::-1] for i in range(settings["repeats"])]
    launches = [item for order in passes for item in order]
    rows = fastest([run_isolated(settings, *item) for item in tqdm(launches, desc="bench", unit="launch")])
    baseline = {r["prompt_length"]: r for r in rows if r["method"] == "peft"}
    standard = {(r["method"], r["prompt_length"]): r for r in rows if r["path"] != "shared_prefix"}
    for r in rows:
        base = baseline[r["prompt_length"]]
        r["peak_ratio_vs_peft"] = r["peak_bytes"] / base["peak_bytes"]
        r["throughput_ratio_vs_peft"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["step_time_ratio_vs_peft"] = r["step_time_min"] / base["step_time_min"]
        # the same work in both paths, so the throughput ratio is the inverse step-time ratio
        reference = standard[r["method"], r["prompt_length"]]
        r["throughput_ratio_vs_standard"] = reference["step_time_min"] / r["step_time_min"]
        r["eval_speedup_vs_standard"] = reference["eval_s_per_example"] / r["eval_s_per_example"]
    out = Path(settings["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "bench.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out)
    setup = [settings.get("deepspeed") and f"{settings['deepspeed']} x {settings['ranks']} ranks",
             settings.get("load_in_8bit") and "8-bit", settings.get("load_in_4bit") and "4-bit",
             settings.get("gradient_checkpointing") and "gradient checkpointing",
             settings["flush_denormal"] and "denormals flushed"]
    print(f"{settings['model']}, batch {batch} x {seq_len} per rank, {settings['precision']}, "
          f"{', '.join(x for x in setup if x) or 'one process'}; peak (max over ranks) measured by: "
          f"{rows[0]['measured_by']}")
    print("| method | path | loop | c | prompt tokens | trainable | s/step (fastest) | tokens/s | peak MiB | time/peft "
          "| peak/peft | throughput vs peft | vs standard | eval s/example | eval vs standard |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['path']} | {r['loop']} | {r['prompt_length']} | {r['prompt_tokens']} | "
              f"{r['trainable_params']:,} | {r['step_time_min']:.4f} | {r['tokens_per_s']:.0f} | "
              f"{r['peak_bytes'] / 2**20:.0f} | "
              f"{r['step_time_ratio_vs_peft']:.2f} | {r['peak_ratio_vs_peft']:.2f} | "
              f"{r['throughput_ratio_vs_peft']:.2f} | {r['throughput_ratio_vs_standard']:.2f} | "
              f"{r['eval_s_per_example']:.4f} | {r['eval_speedup_vs_standard']:.2f} |")
    print(f"wrote {out / 'bench.csv'}, {out / 'memory.png'}, {out / 'throughput.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
