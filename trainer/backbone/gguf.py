"""GGUF backbones (`--model file.gguf`, `--model dir/file.gguf`, `--model org/repo/file.gguf`).

transformers reads the file and dequantizes it; lrpt writes the result once with `save_pretrained`
(float32 safetensors: the dequantized values exactly) into a cache folder, and from then on every
run — ZeRO-3's sharded loading and bitsandbytes quantization included — loads that directory as it
loads any local checkpoint, in the run's precision. The cache is keyed by the file's real path, size
and modification time and by the transformers version (the conversion is transformers' code); it is
written into a temporary folder and renamed into place, under a file lock, so ranks starting together
convert once and no process ever reads half a cache.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import LrptError

SUFFIX = ".gguf"


def is_gguf(name: str) -> bool:
    return name.lower().endswith(SUFFIX)


def cache_root() -> Path:
    """`$LRPT_CACHE/gguf`, else `$XDG_CACHE_HOME/lrpt/gguf`, else `~/.cache/lrpt/gguf`."""
    if os.environ.get("LRPT_CACHE"):
        return Path(os.environ["LRPT_CACHE"]).expanduser() / "gguf"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lrpt" / "gguf"


def locate(name: str) -> Path:
    """The GGUF file on this machine: a local path, else `org/repo/path/in/repo.gguf` from the hub (its
    cache first; HF_HUB_OFFLINE=1 never downloads)."""
    local = Path(name).expanduser()
    if local.is_file():
        return local.resolve()
    parts = name.split("/")
    if name.startswith(("/", ".", "~")) or len(parts) < 3:
        raise LrptError(f"GGUF file {name!r} does not exist (give a local .gguf path, or org/repo/file.gguf "
                        "for a file in a hub repository)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))).resolve()
    except (OSError, ValueError) as exc:
        raise LrptError(f"could not fetch {name!r} from the hub: {exc}".splitlines()[0] +
                        " (offline? give a local .gguf path)") from None


def cache_dir(path: Path) -> Path:
    """Where the conversion of `path` lives: `<stem>-<hash of real path, size, mtime, transformers version>`."""
    import transformers

    stat = path.stat()
    key = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{transformers.__version__}"
    return cache_root() / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def local_dir(name: str) -> str:
    """The safetensors directory of a GGUF `--model` value, converting it on first use."""
    path = locate(name)
    target = cache_dir(path)
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.with_name(f".{target.name}.lock")):
        if not target.is_dir():  # another process may have finished while this one waited
            _convert(path, target)
    return str(target)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock the kernel drops with its holder: a killed conversion leaves nothing to clear."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_readable(path: Path):
    """The file's config through transformers' GGUF reader, before any tensor is read: an architecture it
    cannot read is one line."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError:
        raise LrptError("reading GGUF files needs the gguf package: pip install 'gguf>=0.10'") from None
    except (OSError, ValueError, KeyError) as exc:
        raise LrptError(f"transformers cannot read {path.name}: {exc}".splitlines()[0] +
                        " (use a GGUF of an architecture transformers reads, or a safetensors checkpoint)") from None


def _convert(path: Path, target: Path) -> None:
    """Dequantize with transformers, `save_pretrained` into a temporary sibling, rename into place."""
    import transformers

    config = _check_readable(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with _whole_model():
            model, tokenizer = _load(path, config)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        stat = path.stat()
        (tmp / "lrpt_gguf_source.json").write_text(json.dumps(
            {"gguf": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "transformers": transformers.__version__}, indent=1) + "\n")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(path: Path, config):
    """The whole dense model in float32 (the dequantized values exactly) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    kwargs = {"gguf_file": path.name, "dtype": torch.float32}
    try:  # transformers >= 5.x keeps GGUF blocks packed unless told to dequantize
        from transformers.utils.quantization_config import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantize
        pass
    try:
        model = auto.from_pretrained(str(path.parent), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError) as exc:
        raise LrptError(f"transformers could not convert {path.name}: {exc}".splitlines()[0]) from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # dense already; the GGUF quantizer only refuses save_pretrained
        quantizer.remove_quantization_config(model)
    return model, tokenizer


@contextlib.contextmanager
def _whole_model() -> Iterator[None]:
    """Build the model whole even where a caller keeps ZeRO-3's HfDeepSpeedConfig alive: the cache holds full
    tensors, and ZeRO-3 then loads it partitioned like any checkpoint."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
