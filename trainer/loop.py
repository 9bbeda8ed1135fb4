"""One training run: RunConfig in, report out. Reads top to bottom like the recipe it is."""
from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm
from transformers import PretrainedConfig

from lrpt import methods
from lrpt.eval.tasks import Task, get_task
from lrpt.trainer import build_lock, checkpoint, distributed, monitor, preempt, run_dir, weights_only
from lrpt.trainer.backbone import Backbone, load_backbone, resolve_config
from lrpt.trainer.config import RunConfig
from lrpt.trainer.data import (Encoder, fitted_micro_batch, load_run_data, micro_batches_per_epoch, tokenize,
                                 train_batches)
from lrpt.trainer.evaluate import evaluate
from lrpt.trainer.ds_config import read_ds_config, resolve_ds_config, zero_stage
from lrpt.trainer.errors import LrptError
from lrpt.trainer.flops import device_peak_flops, matmul_params, step_flops
from lrpt.trainer.meter import (LoadPeak, StepMeter, optimizer_state_tensors, parameter_bytes, peak_memory,
                                tensor_bytes)
from lrpt.trainer.prompted import PromptedModel
from lrpt.trainer import quant, shared_prefix
from lrpt.trainer.quant_load import sharded as sharded_quantized_load
from lrpt.trainer.report import format_table, write

FP16_UNSAFE = {"t5", "mt5", "umt5", "longt5", "switch_transformers"}


def log(message: str) -> None:
    if distributed.is_main():
        tqdm.write(f"[lrpt] {message}")


def _quiet_libraries() -> None:
    import datasets
    import transformers
    from deepspeed.utils import logger as ds_logger

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    ds_logger.setLevel(logging.WARNING)


def check_run(cfg: RunConfig) -> tuple[Task, PretrainedConfig]:
    """Everything that can be refused before a weight is loaded; returns the task and the backbone's config."""
    cfg.validate()
    try:
        task = get_task(cfg.task)
    except KeyError as exc:
        raise LrptError(exc.args[0]) from None
    config = resolve_config(cfg.model)
    if cfg.precision == "fp16" and config.model_type in FP16_UNSAFE:
        raise LrptError(f"--precision fp16 with a {config.model_type} backbone: T5's activations overflow fp16 "
                        "(inf/NaN losses; T5 was trained in bf16). Use --precision bf16, or fp32")
    quant.check_support(cfg, config.model_type, read_ds_config(cfg.deepspeed))  # the support matrix
    check_shared_prefix(cfg, config)
    monitor.check_available(cfg)
    try:  # shapes and keywords, on a stand-in one-row vocabulary
        build_method(cfg, config.hidden_size, embedding_weight=torch.zeros(1, config.hidden_size), init_token_ids=[0])
    except ValueError as exc:
        raise LrptError(str(exc)) from None
    return task, config


def check_shared_prefix(cfg: RunConfig, config: PretrainedConfig) -> bool:
    """Whether this run computes the prompt once per batch (trainer/shared_prefix.py). It is proven
    (tests/test_shared_prefix.py) for every decoder-only backbone type it lists, on every ZeRO stage,
    quantized or not, with or without gradient checkpointing: `auto` takes it there and the standard
    path elsewhere; `true` where it is not proven is an error rather than an assumption."""
    why = shared_prefix.refusal(config) if cfg.shared_prefix != "false" else None
    if why and cfg.shared_prefix == "true":
        raise LrptError(f"--shared_prefix: {why}; drop --shared_prefix")
    return cfg.shared_prefix != "false" and why is None


def load_frozen(cfg: RunConfig, ds_config: dict, world: int) -> tuple[Backbone, object]:
    """The frozen backbone as `deepspeed.initialize` must receive it, and ZeRO-3's `HfDeepSpeedConfig`, which
    the caller keeps alive while the model lives (None below ZeRO-3). Under ZeRO-3 the weights arrive
    sharded: unquantized ones built inside `zero.Init`, quantized ones partitioned as they load
    (trainer/quant_load.py) or, with --quantized_load whole, loaded whole and sharded by initialize."""
    from transformers.integrations import HfDeepSpeedConfig

    stage3, quantized = zero_stage(ds_config) == 3, quant.mode(cfg) is not None
    keep_alive = HfDeepSpeedConfig(ds_config) if stage3 and not quantized else None
    sharded_load = sharded_quantized_load(cfg, ds_config)
    log(f"loading {cfg.model} (frozen, {cfg.precision}), {world} rank(s), ZeRO stage {zero_stage(ds_config)}"
        + (", each rank keeping only its share of the quantized weights" if sharded_load else ""))
    backbone = load_backbone(cfg.model, cfg.precision, cfg.gradient_checkpointing, quant.bnb_config(cfg),
                             sharded=ds_config if sharded_load else None)
    if stage3 and quantized:
        keep_alive = HfDeepSpeedConfig(ds_config)  # for generate's synced_gpus; loading is done
        # Before deepspeed.initialize: initialize is where ZeRO-3 converts and partitions the parameters
        # and hooks the layers, so the layers it must see are the ones that compute from the gathered
        # shard; after it, bnb's hidden 8-bit `CB` copy would already hold the full matrix on every rank.
        quant.prepare_for_zero3(backbone.model)
    return backbone, keep_alive


def use_shared_prefix(cfg: RunConfig, backbone: Backbone) -> bool:
    """Install the shared prefix where the loaded backbone takes it (shared_prefix.install: the model type and
    its attention kernel); --shared_prefix true refuses where it cannot. Logs the path taken."""
    why = "--shared_prefix false" if cfg.shared_prefix == "false" else shared_prefix.install(backbone.model)
    if why and cfg.shared_prefix == "true":
        raise LrptError(f"--shared_prefix: {why}; drop --shared_prefix")
    log("shared prefix: the prompt is computed once per batch" if why is None else
        f"shared prefix off ({why}): the prompt is computed for every example")
    return why is None


def build_method(cfg: RunConfig, embed_dim: int, **context) -> methods.PromptModule:
    """The run's method with the options it set; `context` adds the backbone's (embedding rows, the
    tokenized init_text) and may override an option (a loaded prompt starts from init="random")."""
    return methods.build(cfg.method, cfg.prompt_length, embed_dim, **{**cfg.method_options(), **context})


def build_prompt(cfg: RunConfig, backbone: Backbone) -> methods.PromptModule:
    import deepspeed

    embedding = backbone.model.get_input_embeddings().weight
    text = cfg.method_options().get("init_text")
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"] if text else None
    # Under ZeRO-3 every rank holds only its shard of the embedding (shape [0] here): gather it to read rows.
    with deepspeed.zero.GatheredParameters([embedding]):
        weight = embedding.detach().to(torch.float32).clone()
    return build_method(cfg, backbone.embed_dim, embedding_weight=weight, init_token_ids=ids,
                        generator=torch.Generator().manual_seed(cfg.seed))


def default_output_dir(cfg: RunConfig) -> str:
    return str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}-{cfg.task}")


def _tokens(batch: dict, is_encoder_decoder: bool) -> int:
    tokens = int(batch["attention_mask"].sum())
    if is_encoder_decoder:
        tokens += int((batch["labels"] != -100).sum())
    return tokens


def _mean_over_ranks(value: float) -> float:
    return sum(distributed.gather(value)) / distributed.world_size()


@dataclass
class Session:
    """Everything `setup` builds: the engine and what feeds it. `fit` trains it; probes and tests
    can drive the very same engine on batches of their own."""
    cfg: RunConfig
    task: Task
    backbone: Backbone
    encoder: Encoder
    model: PromptedModel
    engine: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    ds_config: dict
    train_rows: object
    eval_rows: object
    dev_rows: object
    steps_per_epoch: int
    total_steps: int
    load_peak_bytes: int | None = 0  # this rank's allocator peak while the backbone loaded
    load_peak_measured_by: str = ""
    load_seconds: float = 0.0  # wall time from the start of the load until deepspeed.initialize has sharded it
    keep_alive: object = None  # ZeRO-3's HfDeepSpeedConfig must outlive the model it sharded
    resume: Path | None = None  # the checkpoint the run directory's claim found to resume from

    @property
    def prompt(self) -> methods.PromptModule:
        return self.model.prompt

    @property
    def stage(self) -> int:
        return zero_stage(self.ds_config)

    def batches(self, epoch: int, skip: int = 0):
        return train_batches(self.train_rows, self.ds_config["train_micro_batch_size_per_gpu"],
                             self.backbone.tokenizer.pad_token_id,
                             self.cfg.seed, epoch, distributed.rank(), distributed.world_size(), skip=skip)


@dataclass
class TrainResult:
    """What a run leaves in memory: the report, the trained model and its DeepSpeed engine (None, None for a
    finished run relaunched, which loads nothing)."""
    report: dict
    model: PromptedModel | None
    engine: object


def setup(cfg: RunConfig) -> Session:
    """Validate, join the process group, load the (sharded) backbone, build prompt, data, engine."""
    import deepspeed
    from transformers import get_linear_schedule_with_warmup

    task, backbone_config = check_run(cfg)
    _quiet_libraries()
    raw = read_ds_config(cfg.deepspeed)
    ds_stage = zero_stage(raw)
    if ds_stage == 3 and not distributed.launched() and not raw["zero_optimization"].get("offload_param"):
        raise LrptError("a ZeRO-3 config needs a launcher: ZeRO-3 shards the backbone across ranks, and this process "
                        "was started alone (no RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT). Launch with "
                        "`deepspeed --num_gpus N trainer/run.py ...` or torchrun; on one device use "
                        "ds_configs/zero3_offload.json, or ds_configs/zero0.json when the backbone fits")
    build_lock.clear_stale_locks(log)  # a build killed earlier would make DeepSpeed's start wait forever
    build_lock.announce_cpu_comm_build(log)
    distributed.init_process_group()
    world = distributed.world_size()
    cfg.output_dir = distributed.broadcast(cfg.output_dir or default_output_dir(cfg))
    out = Path(cfg.output_dir)
    resume = run_dir.claim(cfg, distributed.is_main(), log)  # the directory's contract, before any weight loads
    torch.manual_seed(cfg.seed)
    # every row read and checked before the backbone (minutes at 11B) loads
    data = load_run_data(task, cfg.data_dir, cfg.seed, cfg.few_shot, cfg.dev_size, cfg.max_train_samples,
                         cfg.max_eval_samples)
    micro = fitted_micro_batch(len(data.train), cfg.per_device_train_batch_size, world, cfg.gradient_accumulation_steps)
    if micro < cfg.per_device_train_batch_size:
        log(f"{len(data.train)} training examples are fewer than one global batch of "
            f"{cfg.per_device_train_batch_size * world * cfg.gradient_accumulation_steps}: each step trains on "
            f"{micro * world * cfg.gradient_accumulation_steps} ({micro} per rank and accumulation step)")
    ds_config = resolve_ds_config(cfg, world, backbone_config.hidden_size, micro_batch=micro)
    distributed.barrier()  # an --overwrite_output_dir is cleared before any rank writes into it
    if distributed.is_main():  # the contract is written once every check has passed
        out.mkdir(parents=True, exist_ok=True)
        repeat = {**cfg.to_dict(), "overwrite_output_dir": False}  # `--config` of it resumes, never wipes
        run_dir.config_file(out).write_text(yaml.safe_dump(repeat, sort_keys=False))
    monitor.add_sections(cfg, ds_config, out)

    load_meter = LoadPeak().start()  # this rank's allocator peak while the backbone loads
    backbone, keep_alive = load_frozen(cfg, ds_config, world)
    load_peak = load_meter.stop()  # loaded: partitioned already, or whole until initialize shards it
    loaded = time.perf_counter()
    prompt = build_prompt(cfg, backbone)
    model = PromptedModel(backbone.model, prompt, backbone.is_encoder_decoder,
                          shared_prefix=use_shared_prefix(cfg, backbone))

    encoder = Encoder(backbone.tokenizer, backbone.is_encoder_decoder, cfg.max_source_length, cfg.max_target_length)
    train_rows = tokenize(data.train, encoder)
    for_generation = cfg.decoding == "generate"
    eval_rows = tokenize(data.val, encoder, for_generation=for_generation)
    dev_rows = tokenize(data.dev, encoder, for_generation=for_generation) if data.dev is not None else None

    steps_per_epoch = micro_batches_per_epoch(len(train_rows), micro, world) // cfg.gradient_accumulation_steps
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)

    optimizer = torch.optim.AdamW(prompt.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config,
        lr_scheduler=lambda opt: get_linear_schedule_with_warmup(opt, warmup, total_steps))
    load_seconds = load_peak["seconds"] + time.perf_counter() - loaded  # the profiler's own work left out
    weights_only.install(engine)  # resume reads tensors and data, never code (trainer/weights_only.py)
    if ds_stage == 3:
        from lrpt.trainer import zero3_linear

        zero3_linear.install()  # frozen weights: linear layers save no input (trainer/zero3_linear.py)
    return Session(cfg=cfg, task=task, backbone=backbone, encoder=encoder, model=model, engine=engine, optimizer=optimizer,
                   scheduler=scheduler, ds_config=ds_config, train_rows=train_rows, eval_rows=eval_rows, dev_rows=dev_rows,
                   steps_per_epoch=steps_per_epoch, total_steps=total_steps, keep_alive=keep_alive, resume=resume,
                   load_peak_bytes=load_peak["peak_bytes"], load_peak_measured_by=load_peak["measured_by"],
                   load_seconds=load_seconds)


def train(cfg: RunConfig) -> TrainResult:
    """One run. A finished run relaunched unchanged is not loaded: its report comes back as it was."""
    try:
        run = setup(cfg)
    except run_dir.RunFinished as finished:
        log(str(finished))
        return TrainResult(report=json.loads(finished.report_path.read_text()), model=None, engine=None)
    return fit(run)


def fit(run: Session) -> TrainResult:
    """The loop: resume if a checkpoint exists, train, checkpoint, evaluate, report."""
    cfg, engine, prompt = run.cfg, run.engine, run.prompt
    preempt.install()  # SIGUSR1 (Slurm, before the time limit or a preemption): checkpoint, then exit
    out = Path(cfg.output_dir)
    world = distributed.world_size()
    state = {"step": 0, "loss_curve": [], "eval_history": []}
    resume = run.resume
    if resume is not None:
        state = checkpoint.load(engine, resume)
        log(f"resumed from {resume} at step {state['step']}")
    monitor.rewind(engine, out, state["step"] * run.ds_config["train_batch_size"])
    metadata = {"method": cfg.method, "model": cfg.model, "prompt_length": str(cfg.prompt_length)}

    def save_checkpoint() -> None:
        checkpoint.save(engine, prompt, out, state["step"], state, metadata, cfg.save_total_limit)

    def evaluate_now(rows, predictions_file: Path | None = None) -> dict:
        return evaluate(run.model, rows, run.task, run.encoder, cfg.decoding, cfg.per_device_eval_batch_size,
                        synced_gpus=world > 1 and run.stage == 3, progress=cfg.progress,
                        predictions_file=predictions_file)

    protocol = cfg.selection_protocol  # final | dev | paper-val
    select_split, select_rows = {"dev": ("dev", run.dev_rows), "paper-val": ("val", run.eval_rows)}.get(
        protocol, (None, None))

    def select() -> None:
        """Score the prompt on the selection split and keep it under best/ if it is the best so far."""
        metrics = evaluate_now(select_rows)
        score = run.task.score(metrics)
        state["eval_history"].append({"step": state["step"], "split": select_split, "score": score, **metrics})
        if score > state.get("best", {}).get("score", float("-inf")):
            state["best"] = {"step": state["step"], "score": score}
            (out / "best").mkdir(exist_ok=True)
            checkpoint.save_prompt(prompt, out / "best", metadata)
        log(f"step {state['step']}: {select_split} {metrics} (best: step {state['best']['step']})")

    total_steps, steps_per_epoch, accum = run.total_steps, run.steps_per_epoch, cfg.gradient_accumulation_steps
    select_every = cfg.eval_steps or steps_per_epoch  # DPT picks the best epoch
    log(f"{cfg.method}: {prompt.num_trainable_params():,} trainable parameters; {len(run.train_rows)} train / "
        f"{len(run.eval_rows)} eval examples; {total_steps} steps of {run.ds_config['train_batch_size']} examples")
    meter = StepMeter(warmup=min(2, total_steps // 5))
    matmul = matmul_params(run.backbone.model, run.backbone.is_encoder_decoder)
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {cfg.method}", unit="step",
               disable=not (cfg.progress and distributed.is_main()))
    engine.train()
    # since the last logging step, for --report_to (after a resume: the last one before the checkpoint)
    window = {"start": time.perf_counter(), "tokens": 0, "grad_norm": None,
              "step": state["step"] - state["step"] % cfg.logging_steps}
    backbone_memory = None  # measured after the first step: what the frozen layers keep alive between steps
    while state["step"] < total_steps:
        epoch, done = divmod(state["step"], steps_per_epoch)
        micro = run.batches(epoch, skip=done * accum)
        for i, batch in enumerate(itertools.islice(micro, (steps_per_epoch - done) * accum)):
            if i % accum == 0:
                losses, samples, tokens, flops = [], 0, 0, 0.0
                meter.start()
            torch.manual_seed(cfg.seed + 1_000_003 * state["step"] + i % accum)  # dropout replays on resume
            loss = engine(**batch).loss
            engine.backward(loss)
            if (i + 1) % accum == 0:
                window["grad_norm"] = gradient_norm(run)
            engine.step()
            if backbone_memory is None:
                backbone_memory = quant.backbone_memory(run.backbone.model, cfg.precision)
            losses.append(loss.item())
            samples += batch["input_ids"].shape[0]
            tokens += _tokens(batch, run.backbone.is_encoder_decoder)
            flops += step_flops(run.backbone.model.config, matmul, batch, prompt.output_length,
                                run.model.shared_prefix)  # the prompt once per micro-batch on the shared path
            if (i + 1) % accum:
                continue
            meter.stop(samples, tokens, samples * prompt.output_length, flops)
            state["step"] += 1
            state["loss_curve"].append(_mean_over_ranks(sum(losses) / len(losses)))
            window["tokens"] += tokens
            if state["step"] % cfg.logging_steps == 0 or state["step"] == total_steps:
                log_window(run, state, window)
                diagnostics = prompt_diagnostics(prompt)
                if diagnostics:
                    state.setdefault("diagnostics", []).append({"step": state["step"], **diagnostics})
            bar.update(1)
            bar.set_postfix(loss=f"{state['loss_curve'][-1]:.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.3g}")
            if select_rows is not None and state["step"] % select_every == 0 and state["step"] < total_steps:
                select()
            elif select_rows is None and cfg.eval_steps and state["step"] % cfg.eval_steps == 0 \
                    and state["step"] < total_steps:
                metrics = evaluate_now(run.eval_rows)
                state["eval_history"].append({"step": state["step"], "split": "val", **metrics})
                log(f"step {state['step']}: {metrics}")
            stop = preempt.stop_requested()  # collective, every step: all ranks agree
            if stop or (cfg.save_steps and state["step"] % cfg.save_steps == 0 and state["step"] < total_steps):
                save_checkpoint()
            if stop:
                bar.close()
                log(f"SIGUSR1: checkpoint of step {state['step']} written; exiting with {preempt.EXIT_CODE} "
                    "(to be requeued: the same --output_dir resumes from it)")
                raise SystemExit(preempt.EXIT_CODE)
            if state["step"] >= total_steps:
                break
    bar.close()
    if select_rows is not None and state.get("best", {}).get("step") != state["step"]:
        select()
    if resume is None or state["step"] > checkpoint.step_of(resume):
        save_checkpoint()
    if select_rows is not None and state["best"]["step"] != state["step"]:
        checkpoint.load_prompt(prompt, out / "best" / "prompt.safetensors")
        log(f"evaluating the prompt of step {state['best']['step']} (best on {select_split})")
    metrics = evaluate_now(run.eval_rows, predictions_file=out / "eval_predictions.jsonl")
    checkpoint.save_prompt(prompt, out, metadata)

    per_rank = distributed.gather({"throughput": meter.summary(), "memory": peak_memory(),
                                   "backbone_bytes": parameter_bytes(run.backbone.model),
                                   "load_peak_bytes": run.load_peak_bytes,
                                   "load_peak_measured_by": run.load_peak_measured_by,
                                   "backbone_memory": backbone_memory or quant.backbone_memory(run.backbone.model, cfg.precision),
                                   "optimizer_state_bytes": tensor_bytes(optimizer_state_tensors(run.optimizer))})
    data = {"train_examples": len(run.train_rows), "eval_examples": len(run.eval_rows),
            "dev_examples": len(run.dev_rows) if run.dev_rows is not None else 0,
            "train_batch_size": run.ds_config["train_batch_size"]}  # smaller than asked on a tiny (few-shot) set
    report = build_report(cfg, prompt, state, steps_per_epoch, metrics, per_rank, world, run.stage, run.ds_config,
                          run.model.shared_prefix, data)
    if distributed.is_main():
        write(report, out)
        print(format_table(report), flush=True)
    return TrainResult(report=report, model=run.model, engine=engine)


def gradient_norm(run: Session) -> float | None:
    """The prompt's gradient norm before clipping, at the accumulation boundary: ZeRO-0 leaves the
    (all-reduced) gradients in .grad and keeps no norm of its own; ZeRO-1/2/3 hold them in their
    partitions and compute it themselves (None here)."""
    grads = [p.grad for p in run.prompt.parameters() if p.grad is not None]
    if run.stage != 0 or not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def log_window(run: Session, state: dict, window: dict) -> None:
    """The logging step's events for --report_to: loss averaged over the steps since the last one,
    gradient norm, tokens/s of all ranks (DeepSpeed logs the learning rate). Every rank calls it (the sum is a
    collective)."""
    steps = state["step"] - window["step"]
    tokens = sum(distributed.gather(window["tokens"]))
    seconds = time.perf_counter() - window["start"]
    grad_norm = run.engine.get_global_grad_norm()  # what DeepSpeed's own optimizers computed for clipping
    if grad_norm is None:  # ZeRO-0 with lrpt's AdamW: DeepSpeed keeps none
        grad_norm = window["grad_norm"]
    monitor.write(run.engine, state["step"] * run.ds_config["train_batch_size"], {
        "loss": sum(state["loss_curve"][-steps:]) / steps,
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"), "tokens_per_s": tokens / seconds})
    window.update(start=time.perf_counter(), tokens=0, step=state["step"])


def prompt_diagnostics(prompt: methods.PromptModule) -> dict:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(prompt.parameters())):  # every rank calls it: a collective
        return prompt.diagnostics()


def build_report(cfg, prompt, state, steps_per_epoch, metrics, per_rank, world, stage, ds_config,
                 shared_prefix: bool = False, data: dict | None = None) -> dict:
    import deepspeed
    import transformers

    curve = state["loss_curve"]
    throughput = {"per_rank": [r["throughput"] for r in per_rank]}
    measured = [t for t in throughput["per_rank"] if t.get("steps_measured")]
    if measured:
        for key in ("samples_per_s", "tokens_per_s", "input_tokens_per_s", "prompt_tokens_per_s", "model_flops_per_s"):
            throughput[key] = sum(t[key] for t in measured)  # ranks work in parallel: rates add up
        throughput["step_time_s"] = {k: max(t["step_time_s"][k] for t in measured) for k in ("mean", "p50", "p95")}
        peak = device_peak_flops(cfg.precision)
        throughput["mfu"] = throughput["model_flops_per_s"] / (peak * world) if peak else None
    opt_bytes = [r["optimizer_state_bytes"] for r in per_rank]
    selected = state.get("best", {}).get("step", state["step"])  # the step whose prompt the metrics are of
    return {
        "method": cfg.method,
        "trainable_params": prompt.num_trainable_params(),
        "kept_params": prompt.num_kept_params(),
        "prompt_length": prompt.num_tokens,
        "prompt_output_length": prompt.output_length,
        "shared_prefix": shared_prefix,  # the path this run took (--shared_prefix auto resolves per run)
        "optimizer_state_bytes": sum(opt_bytes),
        "optimizer_state_bytes_per_rank": opt_bytes,
        "metrics": metrics,
        "data": data or {},
        "selected_step": selected,
        # paper-val: chosen on the split the metrics are reported on (DPT's protocol), an optimistic figure
        "selection": {"protocol": cfg.selection_protocol, "step": selected,
                      "optimistic": cfg.selection_protocol == "paper-val"},
        "train": {"steps": state["step"], "epochs": state["step"] / steps_per_epoch,
                  "loss_first": curve[0] if curve else float("nan"), "loss_last": curve[-1] if curve else float("nan"),
                  "loss_curve": curve, "eval_history": state["eval_history"],
                  "diagnostics": state.get("diagnostics", [])},
        "throughput": throughput,
        "memory": {"peak_bytes": [r["memory"]["peak_bytes"] for r in per_rank],
                   "measured_by": per_rank[0]["memory"]["measured_by"],
                   "load_peak_bytes": [r["load_peak_bytes"] for r in per_rank],
                   "load_peak_measured_by": per_rank[0]["load_peak_measured_by"],
                   "backbone_bytes_held": [r["backbone_bytes"]["held"] for r in per_rank],
                   "backbone_bytes_total": per_rank[0]["backbone_bytes"]["total"],
                   # attribute-aware (hidden copies, quant_state, ZeRO shards), after the first step; trainer/quant.py
                   "backbone_bytes_held_all": [r["backbone_memory"]["held_all"] for r in per_rank],
                   "backbone_bytes_unquantized": per_rank[0]["backbone_memory"]["unquantized"],
                   "quant_state_bytes": [r["backbone_memory"]["quant_state"] for r in per_rank]},
        "world_size": world,
        "zero_stage": stage,
        "output_dir": cfg.output_dir,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "deepspeed": deepspeed.__version__},
        "config": cfg.to_dict(),
        "deepspeed_config": ds_config,
    }
