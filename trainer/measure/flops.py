"""Model FLOPs of a prompt-tuning step on a frozen backbone.

A frozen weight needs no gradient, so each weight matmul costs its forward (2·N·T) plus the
backward for the input gradient (2·N·T): about 4·N·T, not the usual 6·N·T. Attention score and
value products (activation × activation) need gradients for both operands: forward 4·T_q·T_k·d
per layer, backward twice that, so 12·T_q·T_k·d per layer (halved for causal self-attention).
N counts matmul parameters only (embedding lookups are not matmuls; the LM head is). In an
encoder-decoder, cross-attention's key and value projections run over the encoder's tokens, not the
decoder's. The shared prefix counts the prompt once per micro-batch (`shared_prefix_flops`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..backbone.quant import logical_numel
from ..model.shared_prefix import read_only_modules

PEAK_FLOPS = {  # dense peak per device, by name fragment and precision (vendor figures, no sparsity);
    # the first fragment found in the device's name wins: PCIe/NVL parts before the SXM ones
    ("H100 PCIe", "bf16"): 756e12, ("H100 PCIe", "fp32"): 51e12,
    ("H100 NVL", "bf16"): 835e12, ("H100 NVL", "fp32"): 60e12,
    ("H200 NVL", "bf16"): 835e12, ("H200 NVL", "fp32"): 60e12,
    ("H100", "bf16"): 989e12, ("H100", "fp32"): 67e12,
    ("H200", "bf16"): 989e12, ("H200", "fp32"): 67e12,
    ("A100", "bf16"): 312e12, ("A100", "fp32"): 19.5e12,
}


def _numel(module: nn.Module) -> int:
    """Elements of the weights as computed with: a 4-bit weight packs two per stored byte (and more per
    stored element in a wider storage dtype), a ZeRO-3 weight is a shard."""
    return sum(logical_numel(p) for p in module.parameters())


def matmul_params(model: nn.Module, is_encoder_decoder: bool) -> dict[str, int]:
    embed = _numel(model.get_input_embeddings())
    head = model.get_output_embeddings()
    head_numel = logical_numel(head.weight) if head is not None else 0
    if is_encoder_decoder:
        return {"encoder": _numel(model.get_encoder()) - embed,
                "decoder": _numel(model.get_decoder()) - embed + head_numel}
    return {"decoder": _numel(model.base_model) - embed + head_numel, "head": head_numel,
            "last_layer_reads": sum(_numel(m) for m in read_only_modules(model))}


def step_flops(config, params: dict[str, int], batch: dict[str, torch.Tensor], prompt_length: int,
               shared_prefix: bool = False) -> float:
    """FLOPs of one forward + input-gradient backward over this (padded) micro-batch;
    `params` from `matmul_params` (an "encoder" entry means encoder-decoder)."""
    is_encoder_decoder = "encoder" in params
    rows, source = batch["input_ids"].shape
    if shared_prefix:
        return shared_prefix_flops(config, params, batch, prompt_length)
    source += prompt_length
    if is_encoder_decoder:
        target = batch["labels"].shape[1]
        width = config.num_heads * config.d_kv
        cross_kv = config.num_decoder_layers * 2 * config.d_model * width  # cross-attention k, v: over the source
        weights = 4 * rows * (params["encoder"] * source + (params["decoder"] - cross_kv) * target + cross_kv * source)
        attention = 12 * rows * width * (config.num_layers * source * source
                                         + config.num_decoder_layers * (target * target / 2 + target * source))
        return float(weights + attention)
    weights = 4 * rows * params["decoder"] * source
    attention = 12 * rows * config.hidden_size * config.num_hidden_layers * source * source / 2
    return float(weights + attention)


def shared_prefix_flops(config, params: dict[str, int], batch: dict[str, torch.Tensor], prompt_length: int) -> float:
    """The shared path (model.shared_prefix) computes the prompt once per micro-batch: the layers
    run over c + rows·L tokens, the head and the last layer's output projection and MLP only where a
    target is predicted, and attention is the prompt's causal square plus each row's L queries over c
    prompt keys and its own L (causal)."""
    rows, width = batch["input_ids"].shape
    c = prompt_length
    predicted = int((batch["labels"][:, 1:] != -100).sum())
    where_read = params["head"] + params.get("last_layer_reads", 0)
    weights = 4 * ((params["decoder"] - where_read) * (c + rows * width) + where_read * predicted)
    attention = 12 * config.hidden_size * config.num_hidden_layers * (c * c / 2 + rows * width * (c + width / 2))
    return float(weights + attention)


def device_peak_flops(precision: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for (frag, prec), peak in PEAK_FLOPS.items() if frag in name and prec == precision), None)
