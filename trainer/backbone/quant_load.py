"""A quantized backbone that never exists whole on a rank: the sharded 8-bit / 4-bit load under ZeRO-3.

transformers quantizes only in `from_pretrained` and never builds a quantized model inside `zero.Init`,
so on the whole path (`--quantized_load whole`, the reference) every rank reads the whole checkpoint,
quantizes the whole backbone, and ZeRO-3 shards it only in `deepspeed.initialize`. Both bitsandbytes
quantizations are local - 8-bit keeps one absmax scale per output row, 4-bit quantizes fixed blocks of
64 values (and, with double quant, blocks of 256 of those scales) - so a weight quantized alone has the
bytes it has when the whole model is quantized. `load_sharded` (the default under ZeRO-3) therefore:

1. builds the model with its parameters on the meta device (buffers such as RoPE's are computed for
   real) and lets transformers' own bitsandbytes quantizer swap in the layers it would quantize
   (`preprocess_model`: its rules - not the output head, `_keep_in_fp32_modules`, `llm_int8_skip_modules`);
2. walks the modules, children first; reads each one's tensors from the safetensors files one tensor
   at a time; a quantized layer's weight is quantized slice by slice with bitsandbytes' own functions (the
   bytes `Int8Params` / `Params4bit` give it in `from_pretrained`; backbone.quant_slices), each rank
   reading and quantizing only the rows of its own partition (and of its 1/N of the row or block scales,
   which are all-gathered: every rank keeps them whole); makes it lrpt's ZeRO-3 layer (backbone.quant)
   and partitions the module at once with `deepspeed.zero.Init(module=...)`, less its broadcast of rank 0's
   copy (`_own_partition_init`): the full-size tensor is freed before the next one is read (on one rank the
   share is the whole, and `deepspeed.initialize` converts every parameter in one pass);
3. `deepspeed.initialize` takes the partitioned model as it takes one built inside `zero.Init`.

So a rank's peak while loading is its share of the quantized backbone, the replicated statistics
(8-bit SCB, 4-bit quant_state) and one tensor being converted.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import os

import numpy as np
import torch
from torch import nn

from ..config.ds_config import DeepSpeedConfig
from ..errors import LrptError
from ..runtime import distributed
from . import quant, quant_slices
from .presets import BUILT
from .source import local_model


def sharded(cfg, ds_config: DeepSpeedConfig) -> bool:
    """Whether this run loads its quantized backbone sharded."""
    return loads_sharded(quant.mode(cfg) is not None, ds_config, cfg.quantized_load)


def loads_sharded(quantized: bool, ds_config: DeepSpeedConfig, quantized_load: str) -> bool:
    """The one rule, for the loader and the memory planner: a quantized backbone loads sharded under ZeRO-3
    (offloaded or not) unless --quantized_load whole, or ZeRO++'s hpZ, whose node-wide secondary partitions are cut
    from whole tensors, of which a rank of the sharded load holds only its own rows."""
    return quantized and ds_config.stage == 3 and quantized_load != "whole" and not ds_config.hpz


def check_quantized_load(cfg, ds_config: DeepSpeedConfig) -> None:
    """Refuse, before any weight loads, a sharded load that cannot happen."""
    if cfg.quantized_load == "sharded" and ds_config.stage != 3:
        raise LrptError("--quantized_load sharded partitions the backbone while it loads, which only ZeRO-3 does: use "
                        "a ZeRO-3 config (--zero 3) or drop --quantized_load")
    if cfg.quantized_load == "sharded" and ds_config.hpz:
        raise LrptError("--quantized_load sharded with zero_hpz_partition_size > 1 (ZeRO++ hpZ): its node-wide "
                        "secondary partitions are cut from whole tensors, which no rank of a sharded load holds. Use "
                        "--quantized_load whole (what auto picks here) or drop zero_hpz_partition_size")
    if sharded(cfg, ds_config) and cfg.model not in BUILT and checkpoint_format(local_model(cfg.model)) == "bin":
        raise LrptError(f"--quantized_load sharded reads the checkpoint tensor by tensor from safetensors files, and "
                        f"{cfg.model} holds only pytorch_model.bin (a pickle: it cannot be read by slice). Convert it "
                        "(from_pretrained, then save_pretrained(dir, safe_serialization=True)) or use "
                        "--quantized_load whole")


def checkpoint_format(name: str) -> str | None:
    """'safetensors', 'bin' or None (no weights found) for a local directory or a hub name (its cache first,
    then the hub's file list; nothing is downloaded)."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
    from transformers.utils.hub import has_file

    path = os.path.expanduser(name)
    kinds = (("safetensors", (SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME)), ("bin", (WEIGHTS_INDEX_NAME, WEIGHTS_NAME)))
    try:
        return next((kind for kind, files in kinds if any(has_file(path, f) for f in files)), None)
    except OSError:  # not a repository: resolve_config has said so already
        return None


def checkpoint_files(path: str) -> list[str]:
    """The checkpoint's safetensors files, resolved as `from_pretrained` resolves them: a local directory,
    else the hub cache, else the hub (HF_HUB_OFFLINE=1: the cache only); sharded (index) or single."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file
    from transformers.utils.hub import get_checkpoint_shard_files

    index = cached_file(path, SAFE_WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False)
    if index is not None:
        return get_checkpoint_shard_files(path, index)[0]
    single = cached_file(path, SAFE_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False)
    if single is None:
        raise LrptError(f"{path} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}: --quantized_load sharded "
                        "reads safetensors checkpoints only; use --quantized_load whole")
    return [single]


# safetensors' dtype names -> torch's, for the tensors the reader maps row by row (others: safetensors reads them)
STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def data_offsets(file: str) -> dict[str, tuple[int, int]]:
    """Each tensor's [begin, end) byte range in a safetensors file, from its JSON header (8 bytes of length,
    then the header; the data follows it). Parsed as JSON, nothing executed."""
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    return {key: (8 + length + entry["data_offsets"][0], 8 + length + entry["data_offsets"][1])
            for key, entry in header.items() if key != "__metadata__"}


class TensorReader:
    """Checkpoint tensors by name, one at a time, from safetensors files (nothing is unpickled).

    safetensors opens and checks every file (keys, dtypes, shapes). Its default "mmap" backend maps each
    whole file into one PyTorch storage that stays alive while the file is open (a sharded checkpoint's
    files add up to the whole checkpoint); its "pread" backend costs about a millisecond per read and a copy.
    So rows are mapped here instead, only the bytes of the rows asked for (numpy's memmap, outside PyTorch's
    allocator), and the caller's conversion into the allocator is the one copy: the load peak counts the
    tensor being converted, not the file."""

    def __init__(self, files: list[str]):
        from safetensors import safe_open

        self.files = files
        self._where = {}  # key -> its file's safetensors handle
        self._mapped: dict[str, tuple[str, int, torch.dtype, list[int]]] = {}  # key -> (file, first byte, dtype, shape)
        for file in files:
            try:
                handle = safe_open(file, framework="pt", device="cpu", backend="pread")
            except TypeError:  # safetensors < 0.8: no backend choice
                handle = safe_open(file, framework="pt", device="cpu")
            offsets = data_offsets(file)
            for key in handle.keys():
                self._where[key] = handle
                stored = handle.get_slice(key)
                dtype, shape = STORED_DTYPES.get(stored.get_dtype()), stored.get_shape()
                if dtype is None or not shape:
                    continue
                start, stop = offsets[key]
                if stop - start != math.prod(shape) * dtype.itemsize:
                    raise LrptError(f"{key}: its bytes in {file} do not match its shape {shape}; the checkpoint is "
                                    "damaged (re-save it), or use --quantized_load whole")
                self._mapped[key] = (file, start, dtype, shape)

    def keys(self) -> set[str]:
        return set(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def key(self, names: list[str]) -> str:
        """The first of `names` (a parameter's names, tied aliases included) the checkpoint stores."""
        key = next((n for n in names if n in self._where), None)
        if key is None:
            raise LrptError(f"{names[0]} is not in the checkpoint ({os.path.dirname(self.files[0])}): --quantized_load "
                            "sharded needs every weight under its model name; use --quantized_load whole")
        return key

    def read(self, names: list[str], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A whole tensor, copied into PyTorch's allocator in `dtype`."""
        key, shape = self.key(names), self.shape(names)
        whole = self.rows(names, 0, shape[0]) if shape else self._where[key].get_tensor(key)
        return whole.to(device=device, dtype=dtype, copy=True)

    def shape(self, names: list[str]) -> torch.Size:
        key = self.key(names)
        return torch.Size(self._where[key].get_slice(key).get_shape())

    def rows(self, names: list[str], first: int, end: int) -> torch.Tensor:
        """Rows [first, end) of a tensor as stored, mapped from the file (quant_slices copies them)."""
        key = self.key(names)
        if key not in self._mapped or end <= first:
            return self._where[key].get_slice(key)[first:end]
        file, start, dtype, shape = self._mapped[key]
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        mapped = np.memmap(file, dtype=np.uint8, mode="c", offset=start + first * row_bytes,
                           shape=((end - first) * row_bytes,))  # copy-on-write: writable for torch, never written
        return torch.from_numpy(mapped).view(dtype).view(end - first, *shape[1:])


def skeleton(config, dtype: torch.dtype, bnb_config, checkpoint_keys: set[str]):
    """The model with every parameter on the meta device and transformers' bitsandbytes layers swapped in,
    tied as the checkpoint ties it; and transformers' quantizer for it."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.initialization import no_init_weights
    from transformers.integrations import is_deepspeed_zero3_enabled
    from transformers.modeling_utils import local_torch_dtype
    from transformers.quantizers import AutoHfQuantizer

    if is_deepspeed_zero3_enabled():  # from_config would build inside zero.Init, never on meta
        raise RuntimeError("load_sharded: create the HfDeepSpeedConfig after loading, as train.loop does")
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    # every parameter is read from the checkpoint: no initialisation, as in from_pretrained (on meta, wasted work)
    with init_empty_weights(include_buffers=False), no_init_weights():
        model = auto.from_config(copy.deepcopy(config), dtype=dtype)
    quantizer = AutoHfQuantizer.from_config(bnb_config, pre_quantized=False)
    with local_torch_dtype(dtype):  # as from_pretrained swaps the layers: a quantized layer's bias in `dtype`
        quantizer.preprocess_model(model=model, dtype=dtype, device_map=_device_map(quantizer), use_kernels=False)
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    model.tie_weights(missing_keys=names - checkpoint_keys, recompute_mapping=False)
    return model, quantizer


def _device_map(quantizer) -> dict:
    """Where `from_pretrained` would quantize (bitsandbytes quantizes on the move to the device)."""
    return quantizer.update_device_map(None)


def aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter (tied parameters have several), by parameter id."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


class ShardedLoader:
    """One rank's walk through the model: read, quantize, partition, free - one module at a time."""

    def __init__(self, model, quantizer, reader: TensorReader, dtype: torch.dtype, ds_config: dict):
        self.model, self.quantizer, self.reader, self.dtype, self.ds_config = model, quantizer, reader, dtype, ds_config
        self.device = torch.device(_device_map(quantizer)[""])
        self.names = aliases(model)
        self.done: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}  # meta parameter id -> (meta, loaded)
        self.share = {"rank": distributed.rank(), "world": distributed.world_size()}  # of each quantized weight
        self.init_class = _own_partition_init() if self.share["world"] > 1 else None

    def run(self) -> None:
        import bitsandbytes as bnb

        for name, module in reversed(list(self.model.named_modules())):  # children before their parents
            self.buffers(name, module)
            if isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)):
                module = self.quantized(name, module)
            elif not self.materialize(module):
                continue
            self.partition(module)

    def materialize(self, module: nn.Module, skip: tuple[str, ...] = ()) -> bool:
        """Set the module's own parameters from the checkpoint, cast as `from_pretrained` casts them (to the
        dtype the model was built in); a tied parameter is read once. False if the module has none."""
        params = [(n, p) for n, p in module.named_parameters(recurse=False) if n not in skip]
        for pname, meta in params:
            if id(meta) not in self.done:
                value = self.reader.read(self.names[id(meta)], meta.dtype, self.device)
                self.done[id(meta)] = (meta, nn.Parameter(value, requires_grad=False))
            setattr(module, pname, self.done[id(meta)][1])
        return bool(params)

    def buffers(self, name: str, module: nn.Module) -> None:
        """Persistent buffers from the checkpoint when it has them; the others (RoPE's inv_freq) as the
        model computed them; all on the device. ZeRO-3 never partitions buffers."""
        for bname, buffer in list(module.named_buffers(recurse=False)):
            key = f"{name}.{bname}" if name else bname
            stored = bname not in module._non_persistent_buffers_set and key in self.reader
            setattr(module, bname, self.reader.read([key], buffer.dtype, self.device) if stored
                    else buffer.to(self.device))

    def quantized(self, name: str, module: nn.Module) -> nn.Module:
        """The lrpt ZeRO-3 layer of one bitsandbytes layer transformers put in place: its weight quantized
        in slices (backbone.quant_slices) with the settings transformers gave the layer's meta parameter."""
        import bitsandbytes as bnb
        from transformers.pytorch_utils import Conv1D

        if issubclass(getattr(module, "source_cls", nn.Linear), Conv1D):
            raise LrptError(f"{name}: a Conv1D layer (stored transposed) does not load sharded; "
                            "use --quantized_load whole")
        self.materialize(module, skip=("weight",))  # the bias, if any
        weight, names = module.weight, self.names[id(module.weight)]
        shape, read = self.reader.shape(names), functools.partial(self.reader.rows, names)
        if isinstance(module, bnb.nn.Linear4bit):
            settings = dict(blocksize=weight.blocksize, compress_statistics=weight.compress_statistics,
                            quant_type=weight.quant_type, quant_storage=weight.quant_storage)
            packed, state = quant_slices.quantize_4bit(read, shape, self.dtype, self.device, **settings,
                                                       **self.share)
            module.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state, module=module,
                                              bnb_quantized=True, **settings)
            module.quant_state = state
            quant.zero_linear_4bit(module)
            return module
        if weight.has_fp16_weights:
            raise LrptError(f"{name}: an 8-bit layer with has_fp16_weights=True is not a frozen int8 layer")
        new = quant.ZeroLinear8bit(*quant_slices.quantize_8bit(read, shape, self.dtype, self.device, **self.share),
                                   module.bias)
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, new)
        return new

    def partition(self, module: nn.Module) -> None:
        """ZeRO-3 partitions the module's parameters now (each rank keeps its share; the full tensors go). On one
        rank the share is the whole: `deepspeed.initialize` converts the parameters, in one pass."""
        if self.share["world"] == 1:
            return
        self.init_class(module=module, config_dict_or_path=self.ds_config)


def _own_partition_init():
    """`deepspeed.zero.Init` that partitions each parameter as every rank holds it, without first broadcasting
    rank 0's copy: every rank read the same files, and a quantized weight holds only the rows of the rank's own
    partition (backbone.quant_slices), which the broadcast would overwrite with rank 0's unwritten ones."""
    import deepspeed

    if not callable(getattr(deepspeed.zero.Init, "_zero_init_param", None)):
        raise LrptError(f"DeepSpeed {deepspeed.__version__} partitions parameters in a way lrpt's sharded quantized "
                        "load does not know: install deepspeed>=0.16,<0.20 or use --quantized_load whole")

    class OwnPartitionInit(deepspeed.zero.Init):
        def _zero_init_param(self, param):
            self._convert_to_deepspeed_param(param)
            param.partition()

    return OwnPartitionInit


def load_sharded(path: str, config, dtype: torch.dtype, bnb_config, ds_config: dict):
    """The quantized model, every parameter already a ZeRO-3 partition (see the module docstring)."""
    from transformers import GenerationConfig

    reader = TensorReader(checkpoint_files(path))
    model, quantizer = skeleton(config, dtype, bnb_config, reader.keys())
    ShardedLoader(model, quantizer, reader, dtype, ds_config).run()
    model.hf_quantizer = quantizer
    quantizer.postprocess_model(model)  # config.quantization_config, is_loaded_in_8bit/4bit, as from_pretrained
    model.eval()
    try:
        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # none saved: the one derived from the model config stays, as from_pretrained keeps it
        pass
    return model
