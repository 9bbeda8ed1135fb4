"""One run's side of the training loop: its micro-batches, step accounting, evaluation, checkpoints, report.

The driver (train.driver) computes each micro-batch's loss and steps the engine, for a run alone (its
engine's forward) or for runs trained together in one forward over one backbone (train.fused). Either
way, a run's steps, logs, evaluations, checkpoints and report are made here, the same way.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ... import methods
from ..backbone import quant
from ..measure.flops import device_peak_flops, matmul_params, step_flops
from ..measure.meter import StepMeter, optimizer_state_tensors, parameter_bytes, peak_memory
from ..rundir import checkpoint, monitor
from ..rundir import files as run_files
from ..rundir.report import (
    Data,
    Fused,
    Memory,
    OptimizerGroup,
    RankThroughput,
    Report,
    Selection,
    Throughput,
    TrainSummary,
    format_table,
)
from ..runtime import distributed, preempt
from ..tensor_bytes import tensor_bytes
from .evaluate import evaluate


def log(message: str) -> None:
    if distributed.is_main():
        tqdm.write(f"[lrpt] {message}")


def tokens_of(batch: dict, is_encoder_decoder: bool) -> int:
    tokens = int(batch["attention_mask"].sum())
    if is_encoder_decoder:
        tokens += int((batch["labels"] != -100).sum())
    return tokens


def mean_over_ranks(value: float) -> float:
    return sum(distributed.gather(value)) / distributed.world_size()


class RunLoop:
    """One run (a `loop.Session`) from its first or resumed step to its report."""

    def __init__(self, run, fused_with: list[str] | None = None):
        self.run, self.cfg, self.fused_with = run, run.cfg, fused_with
        self.out = Path(run.cfg.output_dir)
        self.state = {"step": 0, "loss_curve": [], "eval_history": []}
        if run.resume is not None:
            self.state = checkpoint.load(run.engine, run.resume)
            log(f"resumed from {run.resume} at step {self.state['step']}")
        monitor.rewind(run.engine, self.out, self.state["step"] * run.ds_config.train_batch_size)
        cfg = self.cfg
        self.metadata = {"method": cfg.method, "model": cfg.model, "prompt_length": str(cfg.prompt_length)}
        protocol = self.cfg.selection_protocol  # final | dev | paper-val
        self.select_split, self.select_rows = {"dev": ("dev", run.dev_rows), "paper-val": ("val", run.eval_rows)}.get(
            protocol, (None, None))
        self.select_every = self.cfg.eval_steps or run.steps_per_epoch  # DPT picks the best epoch
        self.meter = StepMeter(warmup=min(2, run.total_steps // 5))
        self.matmul = matmul_params(run.backbone.model, run.backbone.is_encoder_decoder)
        self.backbone_memory = None  # measured after the first step: what the frozen layers keep alive between steps
        self.bar = None
        self.report: Report | None = None  # set by `finish`
        self.window: dict = {}
        self.losses, self.samples, self.tokens, self.flops = [], 0, 0, 0.0

    @property
    def done(self) -> bool:
        return self.state["step"] >= self.run.total_steps

    def begin(self, position: int = 0) -> None:
        """The log line, the untrained prompt's evaluation and the progress bar of the run (`position`: its row
        among fused runs' bars)."""
        run, cfg = self.run, self.cfg
        if cfg.eval_untrained and self.state["step"] == 0 and "untrained" not in self.state:
            # kept in the trainer state, so a resumed run reports the baseline it measured before its first step
            self.state["untrained"] = self.evaluate(run.eval_rows)
            log(f"untrained prompt: {self.state['untrained']}")
        log(f"{cfg.method}: {run.prompt.num_trainable_params():,} trainable parameters; {len(run.train_rows)} train / "
            f"{len(run.eval_rows)} eval examples; {run.total_steps} steps of {run.ds_config.train_batch_size} "
            "examples" + (f" (fused with {', '.join(self.fused_with)})" if self.fused_with else ""))
        self.bar = tqdm(total=run.total_steps, initial=self.state["step"], unit="step", position=position,
                        desc=f"train {Path(cfg.output_dir).name if self.fused_with else cfg.method}",
                        disable=not (cfg.progress and distributed.is_main()))
        # since the last logging step, for --report_to (after a resume: the last one before the checkpoint)
        self.window = {"start": time.perf_counter(), "tokens": 0, "grad_norm": None,
                       "step": self.state["step"] - self.state["step"] % cfg.logging_steps}

    def micro_batches(self):
        """(index in the epoch, micro-batch) until the last step, resuming mid-epoch where the run stopped."""
        run, accum = self.run, self.cfg.gradient_accumulation_steps
        while not self.done:
            epoch, done = divmod(self.state["step"], run.steps_per_epoch)
            micro = run.batches(epoch, skip=done * accum)
            for i, batch in enumerate(itertools.islice(micro, (run.steps_per_epoch - done) * accum)):
                yield i, batch
                if self.done:
                    return

    def seed(self, i: int) -> None:
        """The run's random state before micro-batch `i`'s forward: dropout replays on resume."""
        torch.manual_seed(self.cfg.seed + 1_000_003 * self.state["step"] + i % self.cfg.gradient_accumulation_steps)

    def micro_start(self, i: int) -> None:
        if i % self.cfg.gradient_accumulation_steps == 0:
            self.losses, self.samples, self.tokens, self.flops = [], 0, 0, 0.0
            self.meter.start()

    def boundary(self, i: int) -> bool:
        return (i + 1) % self.cfg.gradient_accumulation_steps == 0

    def micro_done(self, i: int, batch: dict, loss: float, flops: float | None = None) -> bool:
        """Account one micro-batch after `engine.step()`; True when it completed an optimizer step
        (then call `step_done`). `flops`: what was computed for this run's rows (default: its own batch)."""
        run = self.run
        if self.backbone_memory is None:
            self.backbone_memory = quant.backbone_memory(run.backbone.model, self.cfg.precision)
        self.losses.append(loss)
        self.samples += batch["input_ids"].shape[0]
        self.tokens += tokens_of(batch, run.backbone.is_encoder_decoder)
        self.flops += flops if flops is not None else step_flops(
            run.backbone.model.config, self.matmul, batch, run.prompt.output_length,
            run.model.shared_prefix)  # the prompt once per micro-batch on the shared path
        if not self.boundary(i):
            return False
        self.meter.stop(self.samples, self.tokens, self.samples * run.prompt.output_length, self.flops)
        self.state["step"] += 1
        self.state["loss_curve"].append(mean_over_ranks(sum(self.losses) / len(self.losses)))
        self.window["tokens"] += self.tokens
        return True

    def step_done(self, stop: bool) -> None:
        """Logging, evaluation and checkpoint of the step just completed; `stop` (preempt.stop_requested, asked
        once per step by the caller): checkpoint now, whatever --save_steps says."""
        run, cfg, state = self.run, self.cfg, self.state
        if state["step"] % cfg.logging_steps == 0 or self.done:
            log_window(run, state, self.window)
            diagnostics = prompt_diagnostics(run.prompt)
            if diagnostics:
                state.setdefault("diagnostics", []).append({"step": state["step"], **diagnostics})
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{state['loss_curve'][-1]:.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.3g}")
        if self.select_rows is not None and state["step"] % self.select_every == 0 and not self.done:
            self.select()
        elif self.select_rows is None and cfg.eval_steps and state["step"] % cfg.eval_steps == 0 and not self.done:
            metrics = self.evaluate(run.eval_rows)
            state["eval_history"].append({"step": state["step"], "split": "val", **metrics})
            log(f"step {state['step']}: {metrics}")
        if stop or (cfg.save_steps and state["step"] % cfg.save_steps == 0 and not self.done):
            self.save_checkpoint()

    def exit_preempted(self) -> None:
        self.bar.close()
        log(f"SIGUSR1: checkpoint of step {self.state['step']} written to {self.out}; exiting with "
            f"{preempt.EXIT_CODE} (to be requeued: the same --output_dir resumes from it)")

    def save_checkpoint(self) -> None:
        checkpoint.save(self.run.engine, self.run.prompt, self.out, self.state["step"], self.state, self.metadata,
                        self.cfg.save_total_limit)

    def evaluate(self, rows, predictions_file: Path | None = None) -> dict:
        run, cfg = self.run, self.cfg
        return evaluate(run.model, rows, run.task, run.encoder, cfg.decoding, cfg.per_device_eval_batch_size,
                        synced_gpus=distributed.world_size() > 1 and run.stage == 3, progress=cfg.progress,
                        predictions_file=predictions_file)

    def select(self) -> None:
        """Score the prompt on the selection split and keep it under best/ if it is the best so far."""
        state = self.state
        metrics = self.evaluate(self.select_rows)
        score = self.run.task.score(metrics)
        state["eval_history"].append({"step": state["step"], "split": self.select_split, "score": score, **metrics})
        if score > state.get("best", {}).get("score", float("-inf")):
            state["best"] = {"step": state["step"], "score": score}
            (self.out / "best").mkdir(exist_ok=True)
            checkpoint.save_prompt(self.run.prompt, self.out / "best", self.metadata)
        log(f"step {state['step']}: {self.select_split} {metrics} (best: step {state['best']['step']})")

    def finish(self, fused: Fused | None = None) -> Report:
        """Final selection, checkpoint and evaluation; the report (written, printed on rank 0, returned).
        `fused`: the group of a run trained in one (train.fused)."""
        run, cfg, state, out = self.run, self.cfg, self.state, self.out
        if self.bar is not None:
            self.bar.close()
        if self.select_rows is not None and state.get("best", {}).get("step") != state["step"]:
            self.select()
        if run.resume is None or state["step"] > checkpoint.step_of(run.resume):
            self.save_checkpoint()
        if self.select_rows is not None and state["best"]["step"] != state["step"]:
            checkpoint.load_prompt(run.prompt, out / "best" / "prompt.safetensors")
            log(f"evaluating the prompt of step {state['best']['step']} (best on {self.select_split})")
        metrics = self.evaluate(run.eval_rows, predictions_file=out / "eval_predictions.jsonl")
        checkpoint.save_prompt(run.prompt, out, self.metadata)
        backbone_memory = self.backbone_memory or quant.backbone_memory(run.backbone.model, cfg.precision)
        per_rank = distributed.gather({"throughput": self.meter.summary(), "memory": peak_memory(),
                                       "backbone_bytes": parameter_bytes(run.backbone.model),
                                       "load_peak_bytes": run.load_peak_bytes,
                                       "load_peak_measured_by": run.load_peak_measured_by,
                                       "backbone_memory": backbone_memory,
                                       "optimizer_state_bytes": tensor_bytes(optimizer_state_tensors(run.optimizer))})
        data = Data(train_examples=len(run.train_rows), eval_examples=len(run.eval_rows),
                    dev_examples=len(run.dev_rows) if run.dev_rows is not None else 0,
                    train_batch_size=run.ds_config.train_batch_size)  # smaller than asked on a tiny (few-shot) set
        report = build_report(cfg, run.prompt, state, run.steps_per_epoch, metrics, per_rank, distributed.world_size(),
                              run.stage, run.ds_config.json, run.model.shared_prefix, data,
                              optimizer_groups(run.prompt, run.optimizer))
        report.fused = fused
        self.report = report
        if distributed.is_main():
            run_files.record_monitors(out)  # TensorBoard's and W&B's files, named as they appeared
            report.write(out)
            print(format_table(report), flush=True)
        return report


def optimizer_groups(prompt, optimizer) -> list[OptimizerGroup]:
    """AdamW's groups as the optimizer holds them (DeepSpeed's wraps torch's and keeps its groups' settings): the
    rate each started from (the schedule's `initial_lr`), its decay, and its parameters counted on the method."""
    sizes = {group.name: sum(getattr(p, "ds_numel", p.numel()) for p in group.params)
             for group in prompt.param_groups()}
    return [OptimizerGroup(name=g["name"], params=sizes[g["name"]], learning_rate=g.get("initial_lr", g["lr"]),
                           weight_decay=g["weight_decay"]) for g in optimizer.param_groups]


def build_report(cfg, prompt, state, steps_per_epoch, metrics, per_rank, world, stage, ds_config,
                 shared_prefix: bool = False, data: Data | None = None,
                 groups: list[OptimizerGroup] | None = None) -> Report:
    """The report of a finished run from its state and every rank's measurements (`per_rank`, gathered)."""
    import deepspeed
    import transformers

    curve = state["loss_curve"]
    throughput = Throughput.of_ranks([RankThroughput.from_dict(r["throughput"]) for r in per_rank],
                                     device_peak_flops(cfg.precision), world)
    opt_bytes = [r["optimizer_state_bytes"] for r in per_rank]
    selected = state.get("best", {}).get("step", state["step"])  # the step whose prompt the metrics are of
    return Report(
        method=cfg.method,
        trainable_params=prompt.num_trainable_params(),
        kept_params=prompt.num_kept_params(),
        prompt_length=prompt.num_tokens,
        prompt_output_length=prompt.output_length,
        shared_prefix=shared_prefix,
        optimizer_state_bytes=sum(opt_bytes),
        optimizer_state_bytes_per_rank=opt_bytes,
        optimizer_groups=groups or [],
        metrics=metrics,
        metrics_untrained=state.get("untrained"),
        data=data,
        selected_step=selected,
        selection=Selection(protocol=cfg.selection_protocol, step=selected,
                            optimistic=cfg.selection_protocol == "paper-val"),
        train=TrainSummary(steps=state["step"], epochs=state["step"] / steps_per_epoch,
                           loss_first=curve[0] if curve else float("nan"),
                           loss_last=curve[-1] if curve else float("nan"),
                           loss_curve=curve, eval_history=state["eval_history"],
                           diagnostics=state.get("diagnostics", [])),
        throughput=throughput,
        memory=Memory(peak_bytes=[r["memory"]["peak_bytes"] for r in per_rank],
                      measured_by=per_rank[0]["memory"]["measured_by"],
                      load_peak_bytes=[r["load_peak_bytes"] for r in per_rank],
                      load_peak_measured_by=per_rank[0]["load_peak_measured_by"],
                      backbone_bytes_held=[r["backbone_bytes"]["held"] for r in per_rank],
                      backbone_bytes_total=per_rank[0]["backbone_bytes"]["total"],
                      backbone_bytes_held_all=[r["backbone_memory"]["held_all"] for r in per_rank],
                      backbone_bytes_unquantized=per_rank[0]["backbone_memory"]["unquantized"],
                      quant_state_bytes=[r["backbone_memory"]["quant_state"] for r in per_rank]),
        world_size=world,
        zero_stage=stage,
        output_dir=cfg.output_dir,
        versions={"torch": torch.__version__, "transformers": transformers.__version__,
                  "deepspeed": deepspeed.__version__},
        config=cfg.to_dict(),
        deepspeed_config=ds_config,
    )


def gradient_norm(run) -> float | None:
    """The prompt's gradient norm before clipping, at the accumulation boundary: ZeRO-0 leaves the
    (all-reduced) gradients in .grad and keeps no norm of its own; ZeRO-1/2/3 hold them in their
    partitions and compute it themselves (None here)."""
    grads = [p.grad for p in run.prompt.parameters() if p.grad is not None]
    if run.stage != 0 or not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def log_window(run, state: dict, window: dict) -> None:
    """The logging step's events for --report_to: loss averaged over the steps since the last one,
    gradient norm, tokens/s of all ranks (DeepSpeed logs the learning rate). Every rank calls it (the sum is a
    collective)."""
    steps = state["step"] - window["step"]
    tokens = sum(distributed.gather(window["tokens"]))
    seconds = time.perf_counter() - window["start"]
    grad_norm = run.engine.get_global_grad_norm()  # what DeepSpeed's own optimizers computed for clipping
    if grad_norm is None:  # ZeRO-0 with lrpt's AdamW: DeepSpeed keeps none
        grad_norm = window["grad_norm"]
    monitor.write(run.engine, state["step"] * run.ds_config.train_batch_size, {
        "loss": sum(state["loss_curve"][-steps:]) / steps,
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"), "tokens_per_s": tokens / seconds})
    window.update(start=time.perf_counter(), tokens=0, step=state["step"])


def prompt_diagnostics(prompt: methods.PromptModule) -> dict:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(prompt.parameters())):  # every rank calls it: a collective
        return prompt.diagnostics()
