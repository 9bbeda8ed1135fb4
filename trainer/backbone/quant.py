"""Quantized frozen backbones (bitsandbytes 8-bit and 4-bit) and what ZeRO does to them.

- `bnb_config`: the run's `BitsAndBytesConfig` (transformers' own class and defaults).
- `check_support`: the support matrix (docs/quantization.md); everything refused here is refused
  before a weight is loaded, with the supported alternative in the message.
- `prepare_for_zero3` (before `deepspeed.initialize`) / `ZeroLinear8bit`: the 8-bit layer ZeRO-3
  can really shard. bitsandbytes' `Linear8bitLt` keeps the full int8 matrix as `weight.CB` /
  `state.CB` and computes from that copy whenever it is set, ignoring the shard DeepSpeed gathers;
  dropping `CB` alone is silently wrong (bnb re-quantizes the int8 values as if they were floats
  and the true row scale is lost).
  So each layer is replaced by one that holds the int8 matrix only as its ZeRO parameter, keeps
  the per-row scale `SCB` as a small replicated buffer, and dequantizes the *gathered* weight
  (int8 x SCB / 127) on the fly - the same arithmetic as bitsandbytes' own training path on CPU
  (`MatMul8bitFp`), so the numbers equal an unsharded 8-bit model's.
- 4-bit: `Linear4bit` computes from `self.weight`, the tensor ZeRO gathers, with
  `weight.quant_state` (absmax, code) as a replicated attribute (`quant_state_bytes`); but its
  autograd function keeps a view of the gathered weight until backward, so under ZeRO-3 the layer
  gets a forward whose context holds the parameter object instead (`prepare_for_zero3`).
- `prepare_loaded`: after any quantized load (training layout on CPU, shared lookup tables).
- Loading under ZeRO-3 without any rank holding the whole model: backbone.quant_load (it builds
  the `ZeroLinear8bit` / `Zero<Linear4bit>` layers itself, partitioned as they load).
- `backbone_memory`: the report's attribute-aware held bytes, unquantized size, quant_state bytes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config.ds_config import DeepSpeedConfig
from ..errors import LrptError
from ..tensor_bytes import held_bytes, tensor_bytes, tensors_in

# flag spelling -> torch dtype; both lrpt's short names and torch's long ones are accepted
DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
               "fp16": torch.float16, "float16": torch.float16}
STORAGE_NAMES = {"uint8": torch.uint8, "int8": torch.int8, **DTYPE_NAMES}
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def mode(cfg) -> str | None:
    """'8bit', '4bit' or None."""
    return "8bit" if cfg.load_in_8bit else "4bit" if cfg.load_in_4bit else None


def storage_dtype(cfg) -> torch.dtype:
    return STORAGE_NAMES[cfg.bnb_4bit_quant_storage]


def compute_dtype(cfg) -> torch.dtype:
    """--bnb_4bit_compute_dtype, or the run's --precision when unset."""
    return DTYPE_NAMES[cfg.bnb_4bit_compute_dtype] if cfg.bnb_4bit_compute_dtype else PRECISION_DTYPES[cfg.precision]


def import_bitsandbytes() -> None:
    """Import bitsandbytes and transformers' layer of it ahead of the load: the first import registers
    torch.compile'd kernels (a second or two on CPU), which a timed load would otherwise count as loading."""
    import bitsandbytes  # noqa: F401
    import transformers.integrations.bitsandbytes  # noqa: F401


def bnb_config(cfg):
    """transformers' `BitsAndBytesConfig` for the run, or None when the backbone is not quantized."""
    if mode(cfg) is None:
        return None
    from transformers import BitsAndBytesConfig

    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
                              bnb_4bit_compute_dtype=compute_dtype(cfg),
                              bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
                              bnb_4bit_quant_storage=storage_dtype(cfg))


def check_support(cfg, model_type: str, ds_config: DeepSpeedConfig) -> None:
    """The support matrix (docs/quantization.md): refuse, before any weight loads, what is not supported.
    Needs only the RunConfig, the backbone's model_type and the (unresolved) DeepSpeed config."""
    quant = mode(cfg)
    if quant is None:
        return
    flag = "--load_in_8bit" if quant == "8bit" else "--load_in_4bit"
    offload = ds_config.offload_param
    if offload not in ("none", "cpu"):
        raise LrptError(f"{flag} with ZeRO-3 parameter offload to {offload!r}: not supported (the quantized "
                        "ZeRO-3 path is tested with offload to cpu only). Use ds_configs/zero3_offload.json "
                        "(offload_param.device = cpu) or ds_configs/zero3.json")
    buffer_dtype = ds_config.buffer_dtype
    if quant == "8bit" and ds_config.stage == 3 and buffer_dtype not in (None, "fp32", "float32"):
        raise LrptError(f"--load_in_8bit under ZeRO-3 with data_types.buffer_dtype={buffer_dtype!r}: the 8-bit layers "
                        "keep their per-row scales (SCB) as fp32 buffers, and DeepSpeed would cast them, changing "
                        "every dequantized weight. Remove data_types.buffer_dtype from the DeepSpeed config")
    if quant == "4bit":
        storage = storage_dtype(cfg)
        cast = PRECISION_DTYPES[cfg.precision]
        if storage.is_floating_point and cfg.precision != "fp32" and storage != cast:
            raise LrptError(
                f"--bnb_4bit_quant_storage {cfg.bnb_4bit_quant_storage} with --precision {cfg.precision}: DeepSpeed "
                f"casts every floating-point parameter to {cfg.precision} by value, which would corrupt the packed "
                f"4-bit bytes silently. Use --bnb_4bit_quant_storage uint8 (the default; never cast)"
                + (f", or {cfg.precision}" if cfg.precision == "bf16" else ""))


# ---------------------------------------------------------------- ZeRO-3 x 8-bit

def _dequantize(weight: torch.Tensor, scb: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int8 x row scale / 127, exactly as bitsandbytes' `MatMul8bitFp` does it."""
    return weight.to(dtype).mul_(scb.unsqueeze(1).mul(1.0 / 127.0))


def _gathered(weight: nn.Parameter) -> bool:
    """Gather a ZeRO-3 parameter that is partitioned right now; True if this call gathered it."""
    status = getattr(weight, "ds_status", None)
    if status is not None and getattr(status, "name", None) == "NOT_AVAILABLE":
        weight.all_gather()
        return True
    return False


class DequantLinear8bit(torch.autograd.Function):
    """y = x W^T + b with W = dequantize(the weight ZeRO has gathered).

    The context holds the *parameter object* (as DeepSpeed's `LinearFunctionForZeroStage3` does),
    never a tensor taken from it: a saved tensor would keep the full gathered int8 matrix alive
    past ZeRO's release; the parameter object lets backward read whatever ZeRO has gathered then
    (and gather it itself if ZeRO has not). The weight is frozen: no gradient for it."""

    @staticmethod
    def forward(ctx, x, weight, scb, bias):
        ctx.weight, ctx.scb, ctx.dtype = weight, scb, x.dtype
        out = nn.functional.linear(x, _dequantize(weight, scb, x.dtype), None if bias is None else bias.to(x.dtype))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weight = ctx.weight
        gathered_here = _gathered(weight)
        try:
            grad_x = grad_out.to(ctx.dtype).matmul(_dequantize(weight, ctx.scb, ctx.dtype))
        finally:
            if gathered_here:
                weight.partition()
        ctx.weight = ctx.scb = None
        return grad_x, None, None, None


class ZeroLinear8bit(nn.Module):
    """A frozen LLM.int8() linear layer ZeRO-3 can shard: the int8 matrix lives only in `weight`
    (a plain frozen parameter, so ZeRO partitions and gathers it), the per-row scale in the
    replicated buffer `SCB` (out_features fp32 values)."""

    def __init__(self, weight: torch.Tensor, scb: torch.Tensor, bias: nn.Parameter | None):
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2 or scb.shape != weight.shape[:1]:
            raise ValueError(f"expected an int8 [out, in] matrix and [out] scales, got {weight.dtype} "
                             f"{tuple(weight.shape)} and {tuple(scb.shape)}")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.register_buffer("SCB", scb.to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DequantLinear8bit.apply(x, self.weight, self.SCB, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def shard_8bit_for_zero3(model: nn.Module) -> int:
    """Replace every bitsandbytes `Linear8bitLt` of `model` by a `ZeroLinear8bit` holding the same
    int8 matrix (no copy) and scales, and drop every other reference to the full matrix
    (`weight.CB`, `state.CB`). Call before `deepspeed.initialize`. Returns how many were replaced."""
    from bitsandbytes.nn import Linear8bitLt

    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, Linear8bitLt)]
    for name, old in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, zero_linear_8bit(name, old))
    return len(targets)


def zero_linear_8bit(name: str, old: nn.Module) -> ZeroLinear8bit:
    """The `ZeroLinear8bit` of one quantized bitsandbytes `Linear8bitLt` (same int8 matrix, no copy; same
    scales); every other reference to the full matrix (`weight.CB`, `state.CB`) is dropped."""
    weight, state = old.weight, old.state
    matrix = weight.CB if getattr(weight, "CB", None) is not None else state.CB
    scb = weight.SCB if getattr(weight, "SCB", None) is not None else state.SCB
    if matrix is None:
        matrix = weight.data
    if scb is None or matrix.dtype != torch.int8:
        raise LrptError(f"{name}: an 8-bit layer without int8 weights and row scales (not quantized yet?)")
    if state.has_fp16_weights:
        raise LrptError(f"{name}: an 8-bit layer with has_fp16_weights=True is not a frozen int8 layer")
    new = ZeroLinear8bit(matrix.detach(), scb.detach(), old.bias)
    # nothing but the new parameter may keep the full int8 matrix alive
    weight.CB = weight.SCB = state.CB = state.SCB = None
    weight.data = torch.empty(0, dtype=torch.int8)
    return new


def _records_no_graph(x: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and x.requires_grad)


class DequantLinear4bit(torch.autograd.Function):
    """y = x W^T + b with W the 4-bit weight ZeRO has gathered, through bitsandbytes' own kernels.

    bitsandbytes' `MatMul4Bit` keeps a view of the weight in its context for backward: under ZeRO-3
    that view keeps every layer's full gathered packed weight alive from forward to backward (and
    for as long as the loss tensor lives), so the whole 4-bit model is materialized during a step.
    Here the context holds the parameter object, and backward dequantizes what ZeRO has gathered
    then - the same arithmetic as `MatMul4Bit` (forward: `gemm_4bit`; backward: grad x dequantized W)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        import bitsandbytes as bnb

        ctx.weight = weight
        return bnb.matmul_4bit(x, weight, quant_state=weight.quant_state, bias=bias)  # no grad here: no context

    @staticmethod
    def backward(ctx, grad_out):
        from bitsandbytes.functional import dequantize_4bit

        weight = ctx.weight
        gathered_here = _gathered(weight)
        try:
            grad_x = torch.matmul(grad_out, dequantize_4bit(weight.view(-1, 1), weight.quant_state).to(grad_out.dtype))
        finally:
            if gathered_here:
                weight.partition()
        ctx.weight = None
        return grad_x, None, None


def _zero3_linear4bit_forward(self, x: torch.Tensor) -> torch.Tensor:
    """`Linear4bit.forward` whose autograd context holds the parameter, not the gathered data."""
    if _records_no_graph(x):  # no graph is recorded: bitsandbytes' own forward keeps nothing
        return type(self).__mro__[1].forward(self, x)
    if not self.compute_type_is_set:
        self.set_compute_type(x)
        self.compute_type_is_set = True
    inp_dtype = x.dtype
    if self.compute_dtype is not None:
        x = x.to(self.compute_dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return DequantLinear4bit.apply(x, self.weight, bias).to(inp_dtype)


_ZERO3_4BIT_CLASSES: dict[type, type] = {}


def _zero3_class(cls: type) -> type:
    """A subclass of a bitsandbytes 4-bit layer class with the ZeRO-3 forward (one per class)."""
    if cls not in _ZERO3_4BIT_CLASSES:
        _ZERO3_4BIT_CLASSES[cls] = type(f"Zero{cls.__name__}", (cls,), {"forward": _zero3_linear4bit_forward,
                                                                         "__module__": __name__})
    return _ZERO3_4BIT_CLASSES[cls]


def prepare_for_zero3(model: nn.Module) -> dict[str, int]:
    """Make every quantized layer compute from the weight ZeRO-3 gathers, holding nothing else of
    the full matrix: 8-bit layers become `ZeroLinear8bit`; 4-bit layers keep their parameters and
    `quant_state` and get a forward whose autograd context holds the parameter object (their class
    becomes a `Zero<Linear4bit>` subclass, so isinstance checks still hold). Call before
    `deepspeed.initialize`. Returns how many layers of each kind were changed."""
    from bitsandbytes.nn import Linear4bit

    eight = shard_8bit_for_zero3(model)
    four = sum(zero_linear_4bit(module) for module in model.modules() if isinstance(module, Linear4bit))
    return {"8bit": eight, "4bit": four}


def zero_linear_4bit(module: nn.Module) -> bool:
    """Give one bitsandbytes 4-bit layer the ZeRO-3 forward (its class becomes `Zero<Linear4bit>`, its
    parameters and `quant_state` stay); False if it already has it."""
    if type(module) in _ZERO3_4BIT_CLASSES.values():
        return False
    module.__class__ = _zero3_class(type(module))
    return True


def prepare_loaded(model: nn.Module) -> None:
    """Right after a quantized load, on every stage:
    - bitsandbytes' CPU 4-bit layer repacks `weight.data` in place for an AVX512-BF16 inference
      kernel the first time it runs in eval mode: that breaks training after a mid-run evaluation
      (the packed kernel has no backward) and, under ZeRO-3, the repacked data is the gathered
      weight that ZeRO then drops. Keep the training layout.
    - each 4-bit layer's `quant_state` carries its own copy of constant lookup tables (the 16-value
      nf4/fp4 code; with double quantization the 256-value dynamic map): identical in every layer
      and only read. One shared copy each keeps the replicated statistics small."""
    shared: dict = {}

    def share(table: torch.Tensor) -> torch.Tensor:
        key = (table.dtype, table.device, tuple(table.shape), table.cpu().numpy().tobytes())
        return shared.setdefault(key, table)

    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None and getattr(state, "code", None) is not None:
            state.code = share(state.code)
            state = getattr(state, "state2", None)


# ---------------------------------------------------------------- what the report counts

def is_quantized_layer(module: nn.Module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit, ZeroLinear8bit))


def quantized_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_quantized_layer(m)]


def quant_state_bytes(model: nn.Module) -> int:
    """Bytes of the 4-bit layers' `quant_state` tensors (absmax, code, nested statistics): each rank
    holds all of them (replicated under ZeRO-3). Shared tensors count once. 0 without 4-bit layers."""
    tensors = []
    for module in quantized_layers(model):
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            tensors += tensors_in(state)
    return tensor_bytes(tensors)


def logical_numel(param: torch.Tensor) -> int:
    """Elements of the unquantized, unsharded tensor behind a (possibly packed, possibly ZeRO) parameter."""
    state = getattr(param, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return math.prod(state.shape)
    return getattr(param, "ds_numel", param.numel())


def unquantized_bytes(model: nn.Module, precision: str) -> int:
    """The frozen backbone's size unquantized and unsharded, at the run's --precision."""
    size = torch.finfo(PRECISION_DTYPES[precision]).bits // 8
    seen, total = set(), 0
    for p in model.parameters():
        if p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        total += logical_numel(p) * size
    return total


def backbone_memory(model: nn.Module, precision: str) -> dict:
    """This rank's frozen-backbone bytes for the report: `held_all`, every tensor the layers keep
    alive (parameters or their ZeRO shards, buffers, tensors hung on them as attributes; once per
    storage); `unquantized`, the same model unquantized and unsharded at --precision;
    `quant_state`, the replicated 4-bit statistics included in `held_all`."""
    return {"held_all": held_bytes(model.modules()), "unquantized": unquantized_bytes(model, precision),
            "quant_state": quant_state_bytes(model)}
