"""Where a `--model` value's checkpoint and config come from: a preset, a GGUF file, a local directory or a hub name.
The loader, the sharded quantized load and every check before a weight loads ask here."""
from __future__ import annotations

import os

from transformers import AutoConfig, PretrainedConfig

from ..errors import LrptError
from . import gguf
from .presets import BUILT, PACKAGED, PRESETS, packaged_file, preset_config


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that is not a directory is a path typo."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def local_model(name: str) -> str:
    """What `from_pretrained` reads for a `--model` value, the one place a value becomes a checkpoint: a GGUF
    file (or a preset that names one) becomes its converted safetensors directory (backbone.gguf,
    converted on first use), a directory or hub name stays itself. Built presets have no checkpoint."""
    if name in BUILT:
        raise ValueError(f"{name} is built in-process (presets.build_preset), not read from a checkpoint")
    if name in PACKAGED:
        name = packaged_file(name)
    if gguf.is_gguf(name):
        return gguf.local_dir(name)
    if _looks_like_path(name) and not os.path.isdir(os.path.expanduser(name)):
        raise LrptError(f"model path {name!r} does not exist (give a local directory written by save_pretrained, "
                        f"a .gguf file, a hub name such as google/t5-v1_1-base, or a preset: {', '.join(PRESETS)})")
    return os.path.expanduser(name)


def resolve_config(name: str) -> PretrainedConfig:
    """The backbone's config alone: enough to validate a run before loading weights (a GGUF is converted
    here, once, so that everything after reads a plain checkpoint)."""
    if name in BUILT:
        return preset_config(name)
    path = local_model(name)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LrptError(f"could not load model {name!r}: {exc}".splitlines()[0] +
                        " (offline? set HF_HUB_OFFLINE=1 and use a cached name or a local path)") from None
