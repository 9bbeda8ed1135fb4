"""Throughput and memory: what a step costs, measured, with how it was measured."""
from __future__ import annotations

import resource
import statistics
import sys
import time

import torch


class StepMeter:
    """Wall time and tokens per optimizer step; the first `warmup` steps are not counted."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.times: list[float] = []
        self.samples = self.input_tokens = self.prompt_tokens = 0
        self.flops = 0.0
        self._seen = 0
        self._start = 0.0

    def start(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def stop(self, samples: int, input_tokens: int, prompt_tokens: int, flops: float = 0.0) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._start
        self._seen += 1
        if self._seen > self.warmup:
            self.times.append(elapsed)
            self.samples += samples
            self.input_tokens += input_tokens
            self.prompt_tokens += prompt_tokens
            self.flops += flops

    def summary(self) -> dict:
        """Per-rank figures; tokens/s counts prompt and input tokens, also shown apart."""
        total = sum(self.times)
        if not self.times:
            return {"steps_measured": 0, "warmup_steps": self.warmup}
        times = sorted(self.times)
        return {
            "steps_measured": len(times),
            "warmup_steps": self.warmup,
            "step_time_s": {"mean": total / len(times), "p50": statistics.median(times),
                            "p95": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]},
            "samples_per_s": self.samples / total,
            "tokens_per_s": (self.input_tokens + self.prompt_tokens) / total,
            "input_tokens_per_s": self.input_tokens / total,
            "prompt_tokens_per_s": self.prompt_tokens / total,
            "model_flops_per_s": self.flops / total,  # trainer/flops.py: 4·N·T + attention
        }


def peak_memory() -> dict:
    """This process's peak: CUDA's max_memory_allocated on a GPU, else the peak RSS."""
    if torch.cuda.is_available():
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "measured_by": "torch.cuda.max_memory_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return {"peak_bytes": rss * scale, "measured_by": "peak RSS of the process (getrusage ru_maxrss; CPU run)"}


def tensor_bytes(tensors) -> int:
    """Bytes of distinct storages (a tensor seen twice, or a view, counts once)."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.numel():
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor the optimizer keeps: its moments, and DeepSpeed's fp32 master copies if any."""
    base = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO/bf16 wrappers hold the torch one
    tensors = [v for state in base.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    if base is not optimizer:  # master weights owned by the wrapper
        tensors += [p for group in base.param_groups for p in group["params"]]
    return tensors


def parameter_bytes(module: torch.nn.Module, trainable: bool = False) -> dict:
    """Bytes of the (frozen by default) parameters this rank holds, and of the whole set.
    Under ZeRO-3 a rank holds its partition (`ds_tensor`); otherwise the full tensor."""
    held = total = 0
    for p in module.parameters():
        if p.requires_grad != trainable:
            continue
        size = p.element_size()
        held += (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) * size
        total += getattr(p, "ds_numel", p.numel()) * size
    return {"held": held, "total": total}


def tensors_in(obj, depth: int = 3) -> list[torch.Tensor]:
    """Every tensor `obj` keeps alive through its attributes: the tensor itself, tensors in lists,
    tuples and dicts, and tensors hung on plain objects (bitsandbytes' `CB`/`SCB`, a 4-bit
    `quant_state` and its nested state, ZeRO's `ds_tensor` shard). Modules are not followed:
    a parameter's back-reference to its layer must not pull in the whole layer."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(value, level: int) -> None:
        if value is None or id(value) in seen or isinstance(value, (torch.nn.Module, str, bytes, int, float, bool)):
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            found.append(value)
            attrs = getattr(value, "__dict__", {})  # Parameter subclasses carry their state here
        elif isinstance(value, dict):
            attrs = value
        elif isinstance(value, (list, tuple, set)):
            attrs = dict(enumerate(value))
        elif level > 0 and hasattr(value, "__dict__") and type(value).__module__.split(".")[0] in _FOLLOWED:
            attrs = vars(value)
        else:
            return
        if level > 0:
            for item in list(attrs.values()):
                walk(item, level - 1)

    walk(obj, depth)
    return found


# Libraries whose plain objects are followed: bitsandbytes' QuantState and MatmulLtState hang a
# layer's own tensors. DeepSpeed's objects are not: a ZeRO parameter points at the optimizer
# (`_z3_optimizer`), whose tensors are not the layer's; its own shard is a tensor attribute.
_FOLLOWED = ("bitsandbytes",)


def held_bytes(modules) -> int:
    """Bytes every tensor these modules keep alive, counted once per storage: parameters (or, once
    ZeRO-3 has released them, their `ds_tensor` shards), buffers, and tensors hung on parameters
    and layers as attributes (a hidden full copy of a sharded weight counts)."""
    tensors: list[torch.Tensor] = []
    for module in modules:
        for p in module.parameters(recurse=False):
            tensors += tensors_in(p)
        tensors += [b for b in module.buffers(recurse=False)]
        for name, value in vars(module).items():
            if not name.startswith("_"):  # _parameters/_buffers are above; _modules are visited on their own
                tensors += tensors_in(value)
    return tensor_bytes(tensors)
