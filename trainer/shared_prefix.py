"""The shared prefix: a decoder-only backbone computes the soft prompt once per batch.

In a causal model the prompt's c positions attend only to each other, so their hidden states, keys and
values are the same for every example. The batch therefore runs as ONE sequence [P, x_1, ..., x_B]
(each row keeps its padding, so packing is a reshape):
- every linear layer sees c + B·L tokens instead of B·(c + L);
- it is one forward like the standard path's, so under ZeRO-3 each layer is gathered once per pass
  (a separate prompt pass would gather every layer twice), and gradient checkpointing recomputes it
  like any other forward (there is no key/value cache to keep);
- only attention must keep the rows apart: `prefix_attention` splits the packed queries into the
  prompt's (causal among themselves) and each row's (all prompt keys + its own keys, causal, padding
  masked) and runs the backbone's own kernel (sdpa or eager) on each part.
Position ids are the standard path's: 0..c-1 for the prompt, c + column for a row's tokens.
"""
from __future__ import annotations

import sys

import torch
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

INNER = ("sdpa", "eager")  # kernels that take an explicit 4D mask
MODEL_TYPES = ("llama", "mistral", "qwen2")  # checked against the standard path in tests/test_shared_prefix.py
NAME = "lrpt_prefix_{}"  # the registered attention implementation wrapping kernel {}


def _kernel(module: torch.nn.Module, inner: str):
    if inner == "eager":  # no global entry: each model module defines its own
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[inner]


def _prefix_attention(inner: str):
    def attention(module, query, key, value, attention_mask, prefix_length: int | None = None, **kwargs):
        kernel = _kernel(module, inner)
        if prefix_length is None:  # any other call (generation, a standard forward): the kernel itself
            return kernel(module, query, key, value, attention_mask, **kwargs)
        return prefix_attention(kernel, module, query, key, value, attention_mask, prefix_length, **kwargs)
    return attention


def prefix_attention(kernel, module, query, key, value, rows_mask, prefix_length: int, **kwargs):
    """Packed [1, heads, c + B·L, d] query/key/value -> [1, c + B·L, heads, d] attention output.
    `rows_mask` is `rows_mask()`'s [B, 1, L, c + L] additive mask."""
    c, (batch, _, width, _) = prefix_length, rows_mask.shape

    def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # torch.split, not slicing: its backward is one cat, where a slice's fills a zero tensor of the whole size
        prompt, rows = t.split([c, batch * width], dim=2)
        return prompt, rows[0].unflatten(1, (batch, width)).transpose(0, 1)

    (q_p, q_x), (k_p, k_x), (v_p, v_x) = split(query), split(key), split(value)
    causal = torch.full((c, c), torch.finfo(query.dtype).min, dtype=query.dtype, device=query.device).triu(1)
    out_p, _ = kernel(module, q_p, k_p, v_p, causal[None, None], **kwargs)
    keys = torch.cat([k_p.expand(batch, -1, -1, -1), k_x], dim=2)
    values = torch.cat([v_p.expand(batch, -1, -1, -1), v_x], dim=2)
    out_x, _ = kernel(module, q_x, keys, values, rows_mask, **kwargs)
    return torch.cat([out_p, out_x.reshape(1, batch * width, *out_x.shape[2:])], dim=1), None


def rows_mask(attention_mask: torch.Tensor, prefix_length: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, L, c + L] additive mask: every row token sees the whole prompt, then its own row
    causally, never a pad (a pad query still sees the prompt, so no row of the softmax is empty)."""
    width = attention_mask.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=attention_mask.device).tril()
    own = causal[None] & attention_mask.bool()[:, None, :]
    allowed = torch.cat([own.new_ones(own.shape[0], width, prefix_length), own], dim=2)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def refusal(config: PretrainedConfig) -> str | None:
    """Why a backbone (by its config alone, before any weight loads) cannot take the shared prefix."""
    if config.is_encoder_decoder:
        return (f"{config.model_type} is an encoder-decoder: its bidirectional encoder lets every input token "
                "change the prompt's states, so there is nothing to share")
    if config.model_type not in MODEL_TYPES:
        return f"{config.model_type} is not among the backbones it is checked on ({', '.join(MODEL_TYPES)})"
    return None


def install(model: PreTrainedModel) -> str | None:
    """Route the backbone's attention through `prefix_attention` (a standard call still reaches the
    same kernel unchanged). Returns None when done, else why it cannot be."""
    if why := refusal(model.config):
        return why
    inner = model.config._attn_implementation
    if inner.startswith(NAME.format("")):
        return None
    if inner not in INNER:
        return f"attention implementation {inner!r} takes no explicit block mask (use sdpa or eager)"
    name = NAME.format(inner)
    AttentionInterface.register(name, _prefix_attention(inner))
    AttentionMaskInterface.register(name, AttentionMaskInterface._global_mapping[inner])
    model.set_attn_implementation(name)
    return None


def packed_logits(model: PreTrainedModel, prompt: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor,
                  keep: torch.Tensor) -> torch.Tensor:
    """Logits [len(keep), V] at the flat row positions `keep` (row · L + column), the prompt
    [c, e] run once before the rows `tokens` [B, L, e]. The head runs only where asked."""
    batch, width, embed = tokens.shape
    c = prompt.shape[0]
    packed = torch.cat([prompt, tokens.reshape(batch * width, embed)]).unsqueeze(0)
    columns = torch.arange(width, device=tokens.device)
    positions = torch.cat([torch.arange(c, device=tokens.device), c + columns.repeat(batch)]).unsqueeze(0)
    out = model(inputs_embeds=packed, attention_mask=rows_mask(attention_mask, c, tokens.dtype),
                position_ids=positions, prefix_length=c, logits_to_keep=c + keep, use_cache=False)
    return out.logits[0]


def targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target token is predicted from (flat row positions) and the tokens themselves."""
    if (labels[:, 0] != -100).any():
        raise ValueError("shared_prefix: the first input token must not be a target (it would be predicted "
                         "from the prompt's last position); lrpt's data always starts with the source")
    wanted = labels[:, 1:] != -100
    rows, columns = wanted.nonzero(as_tuple=True)
    return rows * labels.shape[1] + columns, labels[:, 1:][wanted]
