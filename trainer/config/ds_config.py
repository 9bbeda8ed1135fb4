"""DeepSpeed config: read a JSON file (or use the built-in ZeRO-0), fill its "auto" fields from the RunConfig."""
from __future__ import annotations

import copy
import json
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


def read_ds_config(path: str | None) -> dict[str, Any]:
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


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


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


def resolve_ds_config(cfg: RunConfig, world_size: int, hidden_size: int | None = None,
                      micro_batch: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config this run uses, every "auto" replaced; contradictions are errors. micro_batch: the
    per-rank batch when the training set is smaller than one global batch of --per_device_train_batch_size.

    ZeRO-3's size-dependent fields follow transformers' rule: parameters smaller than 10·hidden
    stay whole on every rank (norms, biases), the rest is sharded; buckets scale with hidden².
    """
    config = read_ds_config(cfg.deepspeed)
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
    return config
