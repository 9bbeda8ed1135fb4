"""Training runs: RunConfig in, report out, read top to bottom like the recipe it is: checks (before any data or
weight), prepare (process group, the run directory's claim, data, DeepSpeed config), setup (one backbone load for a
run alone or a fused group), train (train.driver), cleanup (the run directories' locks released)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig

from ... import methods
from ...eval.tasks import Task, get_task
from ..backbone import quant, quant_load
from ..backbone.load import Backbone, load_run_backbone
from ..backbone.quant_load import sharded as sharded_quantized_load
from ..backbone.source import resolve_config
from ..config.ds_config import DeepSpeedConfig, fitted_micro_batch, read_ds_config, resolve_ds_config
from ..config.run_config import RunConfig, check_precision
from ..errors import LrptError
from ..measure.meter import LoadPeak
from ..model import shared_prefix
from ..model.prompted import PromptedModel
from ..rundir import contract as run_dir
from ..rundir import lock as run_lock
from ..rundir import monitor, weights_only
from ..rundir.report import Report
from ..runtime import build_lock, distributed
from .data import Encoder, load_run_data, micro_batches_per_epoch, tokenize, train_batches
from .driver import drive
from .fused import PromptOnly, backbone_engine, check_group, run_name
from .run_loop import log


def _quiet_libraries() -> None:
    import datasets
    import transformers
    from deepspeed.utils import logger as ds_logger

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    ds_logger.setLevel(logging.WARNING)


def check_run(cfg: RunConfig) -> tuple[Task, PretrainedConfig, DeepSpeedConfig]:
    """Everything about a run that can be refused before its data is read or a weight is loaded; returns the task,
    the backbone's config and the DeepSpeed config as the run names it."""
    task = run_task(cfg)
    return (task, *check_backbone(cfg))


def run_task(cfg: RunConfig) -> Task:
    cfg.validate()
    try:
        return get_task(cfg.task)
    except KeyError as exc:
        raise LrptError(exc.args[0]) from None


def check_backbone(cfg: RunConfig) -> tuple[PretrainedConfig, DeepSpeedConfig]:
    """What the backbone, its precision, quantization, path and sharding, the monitors and the method's shapes allow,
    by the backbone's config alone (the support matrix: backbone.quant)."""
    config = resolve_config(cfg.model)
    monitor.check_available(cfg)
    ds_config = read_ds_config(cfg.deepspeed)
    check_precision(cfg.precision, config.model_type)
    shared_prefix.decide(cfg.shared_prefix, config)
    quant.check_support(cfg, config.model_type, ds_config)
    quant_load.check_quantized_load(cfg, ds_config)  # --quantized_load: ZeRO-3 and a safetensors checkpoint
    try:  # shapes and keywords, on a stand-in one-row vocabulary
        method = cfg.build_method(config.hidden_size, config.is_encoder_decoder,
                                  embedding_weight=torch.zeros(1, config.hidden_size), init_token_ids=[0])
    except ValueError as exc:
        raise LrptError(str(exc)) from None
    check_offsets(cfg, method.offset_length, cfg.input_positions(config.is_encoder_decoder))
    return config, ds_config


def check_offsets(cfg: RunConfig, covered: int | None, longest: int) -> None:
    """A method's token offsets (DePT) must cover every input position a row can reach (RunConfig.input_positions)."""
    if covered is not None and longest > covered:
        raise LrptError(f"--method {cfg.method}: its token offsets cover {covered} input positions (--offset_length) "
                        f"and a row can reach {longest} (--max_source_length {cfg.max_source_length}, decoder-only "
                        f"+ --max_target_length {cfg.max_target_length}): give --offset_length {longest}, or leave "
                        "it out to cover the longest row")


def load_frozen(cfg: RunConfig, ds_config: DeepSpeedConfig, world: int) -> tuple[Backbone, object]:
    """The frozen backbone as `deepspeed.initialize` must receive it, and ZeRO-3's `HfDeepSpeedConfig`, which
    the caller keeps alive while the model lives (None below ZeRO-3). Under ZeRO-3 the weights arrive
    sharded: unquantized ones built inside `zero.Init`, quantized ones partitioned as they load
    (backbone.quant_load) or, with --quantized_load whole, loaded whole and sharded by initialize."""
    from transformers.integrations import HfDeepSpeedConfig

    stage3, quantized = ds_config.stage == 3, quant.mode(cfg) is not None
    keep_alive = HfDeepSpeedConfig(ds_config.json) if stage3 and not quantized else None
    sharded_load = sharded_quantized_load(cfg, ds_config)
    log(f"loading {cfg.model} (frozen, {cfg.precision}), {world} rank(s), ZeRO stage {ds_config.stage}"
        + (", each rank keeping only its share of the quantized weights" if sharded_load else ""))
    backbone = load_run_backbone(cfg, sharded=ds_config.json if sharded_load else None)
    if stage3 and quantized:
        keep_alive = HfDeepSpeedConfig(ds_config.json)  # for generate's synced_gpus; loading is done
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


def build_prompt(cfg: RunConfig, backbone: Backbone) -> methods.PromptModule:
    import deepspeed

    embedding = backbone.model.get_input_embeddings().weight
    text = cfg.method_options().get("init_text")
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"] if text else None
    # Under ZeRO-3 every rank holds only its shard of the embedding (shape [0] here): gather it to read rows.
    with deepspeed.zero.GatheredParameters([embedding]):
        weight = embedding.detach().to(torch.float32).clone()
    return cfg.build_method(backbone.embed_dim, backbone.is_encoder_decoder, embedding_weight=weight,
                            init_token_ids=ids, generator=torch.Generator().manual_seed(cfg.seed))


def default_output_dir(cfg: RunConfig) -> str:
    return str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}-{cfg.task}")


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
    ds_config: DeepSpeedConfig
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
        return self.ds_config.stage

    def batches(self, epoch: int, skip: int = 0):
        return train_batches(self.train_rows, self.ds_config.micro_batch,
                             self.backbone.tokenizer.pad_token_id,
                             self.cfg.seed, epoch, distributed.rank(), distributed.world_size(), skip=skip)


@dataclass
class TrainResult:
    """What a run leaves in memory: the report, the trained model and its DeepSpeed engine (None, None for a
    finished run relaunched, which loads nothing)."""
    report: Report
    model: PromptedModel | None
    engine: object


@dataclass
class Prepared:
    """A run checked, its directory claimed, its data read and its DeepSpeed config resolved: all that
    happens before the backbone loads (minutes at 11B), so that any refusal comes first."""
    cfg: RunConfig
    task: Task
    data: object
    micro: int  # rows per rank and micro-batch (fewer than asked on a tiny few-shot set)
    ds_config: DeepSpeedConfig
    resume: Path | None  # the checkpoint the run directory's claim found to resume from


def prepare(cfg: RunConfig) -> Prepared:
    """Validate, check the backbone's settings, join the process group, claim the run directory, read the data."""
    task = run_task(cfg)
    _quiet_libraries()
    backbone_config, named = check_backbone(cfg)
    if named.stage == 3 and not distributed.launched() and named.offload_param == "none":
        raise LrptError("a ZeRO-3 config needs a launcher: ZeRO-3 shards the backbone across ranks, and this process "
                        "was started alone (no RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT). Launch with "
                        "`deepspeed --num_gpus N trainer/run.py ...` or torchrun; on one device use "
                        "ds_configs/zero3_offload.json, or ds_configs/zero0.json when the backbone fits")
    build_lock.clear_stale_locks(log)  # a build killed earlier would make DeepSpeed's start wait forever
    build_lock.announce_cpu_comm_build(log)
    distributed.init_process_group()
    cfg.output_dir = distributed.broadcast(cfg.output_dir or default_output_dir(cfg))
    # locked, and the directory's contract checked (a relaunch with other settings names them), before the data
    resume = run_dir.claim(cfg, log)
    torch.manual_seed(cfg.seed)
    # every row read and checked before the backbone (minutes at 11B) loads
    data = load_run_data(task, cfg.data_dir, cfg.seed, cfg.few_shot, cfg.dev_size, cfg.max_train_samples,
                         cfg.max_eval_samples, draw=cfg.few_shot_draw)
    world, accumulation = distributed.world_size(), cfg.gradient_accumulation_steps
    micro = fitted_micro_batch(len(data.train), cfg.per_device_train_batch_size, world, accumulation)
    if micro < cfg.per_device_train_batch_size:
        log(f"{len(data.train)} training examples are fewer than one global batch of "
            f"{cfg.per_device_train_batch_size * world * accumulation}: each step trains on "
            f"{micro * world * accumulation} ({micro} per rank and accumulation step)")
    ds_config = resolve_ds_config(cfg, world, backbone_config.hidden_size, micro_batch=micro)
    if distributed.is_main():  # the contract is written once every check has passed
        run_dir.write_config(cfg)
    monitor.add_sections(cfg, ds_config.json, Path(cfg.output_dir))
    if quant.mode(cfg):
        quant.import_bitsandbytes()  # before the load is timed (Session.load_seconds): the load alone
    return Prepared(cfg=cfg, task=task, data=data, micro=micro, ds_config=ds_config, resume=resume)


def setup(cfg: RunConfig) -> Session:
    """One run's session, as `train` builds it (probes and tests drive its engine on batches of their own)."""
    runs, _ = setup_group([prepare(cfg)], fused=False)
    return runs[0]


def setup_group(preps: list[Prepared], fused: bool) -> tuple[list[Session], object]:
    """One load of the backbone and every run's session on it, each on the shared prefix where it applies. A run
    alone's engine wraps its PromptedModel; fused runs' engines wrap their prompts alone (train.fused.PromptOnly)
    and the backbone runs under an engine of its own, returned (None for a run alone)."""
    first = preps[0]
    load_meter = LoadPeak().start()  # this rank's allocator peak while the backbone loads
    backbone, keep_alive = load_frozen(first.cfg, first.ds_config, distributed.world_size())
    load_peak = load_meter.stop()  # loaded: partitioned already, or whole until initialize shards it
    loaded = time.perf_counter()
    shared = use_shared_prefix(first.cfg, backbone)  # a setting fused runs share (train.fused.SHARED)
    frozen = backbone_engine(backbone.model, first.ds_config) if fused else None
    if fused:
        runs = [build_session(prep, backbone, shared, engine_module=PromptOnly) for prep in preps]
        log(f"fused: {len(preps)} runs in one pass over {first.cfg.model} ("
            + ("the shared prefix: each run's prompt once, its rows behind it)" if shared else
               "the standard path: each row with its run's prompt)"))
    else:
        runs = [build_session(first, backbone, shared)]
    for run in runs:
        run.keep_alive = keep_alive
        run.load_peak_bytes, run.load_peak_measured_by = load_peak["peak_bytes"], load_peak["measured_by"]
        run.load_seconds = load_peak["seconds"] + time.perf_counter() - loaded  # the profiler's own work left out
    return runs, frozen


def build_session(prep: Prepared, backbone: Backbone, shared_prefix: bool, engine_module=None) -> Session:
    """Prompt, tokenized rows, optimizer, schedule and DeepSpeed engine of one run on a loaded backbone.
    The engine wraps the run's PromptedModel, or `engine_module(prompt)` (a fused run's prompt alone,
    train.fused), whose state_dict must name the prompt's tensors as PromptedModel does."""
    import deepspeed
    from transformers import get_linear_schedule_with_warmup

    cfg, world = prep.cfg, distributed.world_size()
    prompt = build_prompt(cfg, backbone)
    model = PromptedModel(backbone.model, prompt, backbone.is_encoder_decoder, shared_prefix=shared_prefix)

    encoder = Encoder(backbone.tokenizer, backbone.is_encoder_decoder, cfg.max_source_length, cfg.max_target_length)
    train_rows = tokenize(prep.data.train, encoder)
    for_generation = cfg.decoding == "generate"
    eval_rows = tokenize(prep.data.val, encoder, for_generation=for_generation)
    dev_rows = tokenize(prep.data.dev, encoder, for_generation=for_generation) if prep.data.dev is not None else None

    steps_per_epoch = micro_batches_per_epoch(len(train_rows), prep.micro, world) // cfg.gradient_accumulation_steps
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)

    optimizer = torch.optim.AdamW(cfg.optimizer_groups(prompt), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model if engine_module is None else engine_module(prompt), optimizer=optimizer,
        config=prep.ds_config.json, lr_scheduler=lambda opt: get_linear_schedule_with_warmup(opt, warmup, total_steps))
    weights_only.install(engine)  # resume reads tensors and data, never code (rundir.weights_only)
    if prep.ds_config.stage == 3:
        from ..backbone import zero3_linear

        zero3_linear.install()  # frozen weights: linear layers save no input (backbone.zero3_linear)
    return Session(cfg=cfg, task=prep.task, backbone=backbone, encoder=encoder, model=model, engine=engine,
                   optimizer=optimizer, scheduler=scheduler, ds_config=prep.ds_config, train_rows=train_rows,
                   eval_rows=eval_rows, dev_rows=dev_rows, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                   resume=prep.resume)


def train(cfg: RunConfig) -> TrainResult:
    """One run: a group of one."""
    return train_group([cfg])[0]


def train_group(cfgs: list[RunConfig], fused: bool | None = None) -> list[TrainResult]:
    """Runs over one load of the backbone: one alone, or fused in one pass (`lrpt sweep --fuse`; by default when
    there are several), every run's checks, claim and data before the backbone loads. A finished run relaunched
    unchanged is not loaded: its report comes back as it was (and a fused group's other runs name it)."""
    fused = len(cfgs) > 1 if fused is None else fused
    if fused:
        check_group(cfgs)
    preps, results = [], {}
    try:
        for cfg in cfgs:
            try:
                preps.append(prepare(cfg))
            except run_dir.RunFinished as finished:
                log(str(finished))
                results[cfg.output_dir] = TrainResult(Report.read(finished.report_path), None, None)
        if preps:
            runs, frozen = setup_group(preps, fused)
            group = [run_name(c) for c in cfgs] if fused else None
            for run, report in zip(runs, drive(runs, frozen, group)):
                results[run.cfg.output_dir] = TrainResult(report, run.model, run.engine)
    finally:  # every run directory is free for the next launch (a sweep's next run in this process included)
        for cfg in cfgs:
            if cfg.output_dir:
                run_lock.release(Path(cfg.output_dir))
    return [results[c.output_dir] for c in cfgs]


def fit(run: Session) -> TrainResult:
    """Train a session `setup` built, to its report (probes that measure a run from its first step)."""
    report, = drive([run])
    return TrainResult(report, run.model, run.engine)
