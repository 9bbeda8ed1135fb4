"""DeepSpeed config: read a JSON file (or use the built-in ZeRO-0) once, into a DeepSpeedConfig, and fill its "auto"
fields from the RunConfig."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LrptError

if TYPE_CHECKING:  # the run's fields are read, never built here: RunConfig imports this module for `shipped`
    from .run_config import RunConfig

DEFAULT = {"zero_optimization": {"stage": 0}}
SHIPPED = ("zero0", "zero2", "zero3", "zero3_offload")


def shipped(name: str) -> str:
    """The path of a config lrpt ships (ds_configs/<name>.json), in a checkout or any install."""
    from importlib.resources import files

    if name not in SHIPPED:
        raise LrptError(f"lrpt ships no DeepSpeed config {name!r}; shipped: {', '.join(SHIPPED)}")
    return str(files("lrpt.ds_configs") / f"{name}.json")


@dataclass(frozen=True)
class DeepSpeedConfig:
    """A DeepSpeed JSON as lrpt reads it: `json` is the dict deepspeed.initialize receives (and the monitor's
    sections extend), the properties are the facts lrpt decides by, so that no other module reads its keys."""
    json: dict[str, Any]

    @property
    def zero(self) -> dict[str, Any]:
        """The zero_optimization section (its knobs: persistence threshold, buckets, reuse distance)."""
        return self.json.get("zero_optimization") or {}

    @property
    def stage(self) -> int:
        return int(self.zero.get("stage", 0))

    @property
    def offload_param(self) -> str:
        """Where ZeRO-3 offloads parameters: none, cpu or nvme."""
        return (self.zero.get("offload_param") or {}).get("device") or "none"

    @property
    def cell(self) -> str:
        """The quantization support matrix's column: '0', '1', '2', '3' or '3-offload'."""
        return "3-offload" if self.stage == 3 and self.offload_param != "none" else str(self.stage)

    @property
    def hpz(self) -> bool:
        """ZeRO++'s hierarchical partitioning: each rank also keeps a node-wide secondary partition, cut from the
        full tensor."""
        return self.zero.get("zero_hpz_partition_size", 1) > 1

    @property
    def buffer_dtype(self) -> str | None:
        return (self.json.get("data_types") or {}).get("buffer_dtype")

    @property
    def train_batch_size(self) -> int:
        return self.json["train_batch_size"]

    @property
    def micro_batch(self) -> int:
        return self.json["train_micro_batch_size_per_gpu"]


def read_ds_config(path: str | None) -> DeepSpeedConfig:
    return DeepSpeedConfig(_read_json(path))


def _read_json(path: str | None) -> dict[str, Any]:
    if path is None:
        return copy.deepcopy(DEFAULT)
    file = Path(path).expanduser()
    if not file.is_file():
        raise LrptError(f"--deepspeed {path!r}: no such file (see ds_configs/ for zero0/zero2/zero3/zero3_offload)")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise LrptError(f"--deepspeed {path!r} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise LrptError(f"--deepspeed {path!r} must hold a JSON object")
    return config


def check_checkpoint_reading(config: dict, path: str | None) -> None:
    """Refuse the DeepSpeed settings under which resume would read files that lrpt's weights-only checkpoint
    engine never checks."""
    if (config.get("checkpoint") or {}).get("load_universal"):
        raise LrptError(f"--deepspeed {path}: checkpoint.load_universal makes DeepSpeed unpickle a universal "
                        "checkpoint's zero/ files (torch.load(weights_only=False)), and lrpt resumes only its own "
                        "checkpoints, read as tensors and data: remove checkpoint.load_universal")


def _fill(config: dict, key: str, value: Any) -> None:
    if config.get(key, "auto") == "auto":
        config[key] = value


def fitted_micro_batch(num_rows: int, batch_size: int, world_size: int, accumulation: int) -> int:
    """The per-rank micro batch: `batch_size`, or, for a training set smaller than one global batch (few-shot
    K = 8 on 8 ranks), as many as it fills, so that each step trains on what there is."""
    fills = num_rows // (world_size * accumulation)
    if fills < 1:
        raise LrptError(f"{num_rows} training examples are fewer than one per rank and accumulation step "
                        f"({world_size} rank(s) x {accumulation}): lower --gradient_accumulation_steps, use fewer "
                        "ranks, or train on more rows")
    return min(batch_size, fills)


def resolve_ds_config(cfg: RunConfig, world_size: int, hidden_size: int | None = None,
                      micro_batch: int | None = None) -> DeepSpeedConfig:
    """The DeepSpeed config this run uses, every "auto" replaced; contradictions are errors. micro_batch: the
    per-rank batch when the training set is smaller than one global batch of --per_device_train_batch_size.

    ZeRO-3's size-dependent fields follow transformers' rule: parameters smaller than 10·hidden
    stay whole on every rank (norms, biases), the rest is sharded; buckets scale with hidden².
    """
    config = _read_json(cfg.deepspeed)
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise LrptError(f"--deepspeed config has an {key!r} section; lrpt builds AdamW and its linear "
                            f"schedule over the prompt parameters itself: remove {key!r} and use "
                            "--learning_rate/--warmup_ratio")
    check_checkpoint_reading(config, cfg.deepspeed)  # before any weight loads
    micro, accum = micro_batch or cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    for key, ours in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", accum)):
        if config.get(key, "auto") not in ("auto", ours):
            raise LrptError(f"--deepspeed config sets {key}={config[key]} but the run uses {ours}; "
                            f"set it to \"auto\" or pass the matching flag")
    if config.get("gradient_clipping", "auto") not in ("auto", cfg.max_grad_norm):  # it would silently win
        raise LrptError(f"--deepspeed config sets gradient_clipping={config['gradient_clipping']} but the run has "
                        f"--max_grad_norm {cfg.max_grad_norm}; set it to \"auto\" (the run's --max_grad_norm) or "
                        "pass the matching --max_grad_norm")
    _fill(config, "train_micro_batch_size_per_gpu", micro)
    _fill(config, "gradient_accumulation_steps", accum)
    global_batch = config.get("train_batch_size", "auto")
    if global_batch != "auto" and global_batch != micro * accum * world_size:
        raise LrptError(f"train_batch_size={global_batch} is not micro batch {micro} x gradient accumulation "
                        f"{accum} x {world_size} ranks = {micro * accum * world_size}; the micro batch must divide "
                        f"the global batch evenly across ranks")
    config["train_batch_size"] = micro * accum * world_size
    _fill(config, "gradient_clipping", cfg.max_grad_norm)
    for precision in ("bf16", "fp16"):
        section = config.setdefault(precision, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = cfg.precision == precision
        elif section["enabled"] != (cfg.precision == precision):
            raise LrptError(f"--deepspeed config has {precision}.enabled={section['enabled']} but --precision is "
                            f"{cfg.precision}; set it to \"auto\"")
    zero = config.setdefault("zero_optimization", {"stage": 0})
    if hidden_size:
        sizes = {"stage3_param_persistence_threshold": 10 * hidden_size,
                 "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
                 "reduce_bucket_size": hidden_size * hidden_size}
        for key, value in sizes.items():
            if zero.get(key) == "auto":
                zero[key] = value
    for key, value in list(zero.items()):
        if value == "auto":  # no size known: DeepSpeed's own defaults
            del zero[key]
    config["zero_allow_untested_optimizer"] = True  # torch AdamW over a few prompt tensors
    config.setdefault("steps_per_print", 10**9)     # lrpt prints its own progress
    return DeepSpeedConfig(config)
