"""Bytes that tensors keep alive, each storage counted once: the one count behind every held-bytes and
memory figure lrpt reports, from the quantized backbone's bookkeeping to the run's report."""
from __future__ import annotations

import torch


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
