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
Several runs fused in one pass (train.fused) pack one such segment each, one after another:
[P_1, rows of run 1, P_2, rows of run 2, ...], each with its own prompt length and row width; attention
splits the sequence into its segments, so every run's attention is the one it computes alone, and the
linear layers see the whole group's tokens at once.
Past the last layer only the positions that predict a target are read, so that layer's output projection
and MLP run at those alone (`LastLayerReads`); its keys and values still cover every position.
"""
from __future__ import annotations

import itertools
import sys
import weakref
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

from ..errors import LrptError

INNER = ("sdpa", "eager")  # kernels that take an explicit 4D mask
MODEL_TYPES = ("llama", "mistral", "qwen2")  # checked against the standard path in tests/test_shared_prefix.py
NAME = "lrpt_prefix_{}"  # the registered attention implementation wrapping kernel {}


def _kernel(module: torch.nn.Module, inner: str):
    if inner == "eager":  # no global entry: each model module defines its own
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[inner]


def _prefix_attention(inner: str):
    def attention(module, query, key, value, attention_mask, prefix_segments: tuple[Packed, ...] | None = None,
                  prefix_reads: torch.Tensor | None = None, **kwargs):
        kernel = _kernel(module, inner)
        if (reads := LAST_LAYER_READS.get(module)) is not None:  # set on every call: a stale set never outlives it
            reads.positions = prefix_reads if prefix_segments is not None else None
        if prefix_segments is None:  # any other call (generation, a standard forward): the kernel itself
            return kernel(module, query, key, value, attention_mask, **kwargs)
        sizes = [segment.length for segment in prefix_segments]
        parts = zip(prefix_segments, query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))
        outs = [prefix_attention(kernel, module, q, k, v, segment.rows_mask, segment.prompt_length, **kwargs)
                for segment, q, k, v in parts]
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0], None
    return attention


@dataclass(frozen=True)
class Packed:
    """What attention needs of one segment of a packed sequence: its prompt's length and its rows' mask."""
    prompt_length: int
    rows_mask: torch.Tensor  # rows_mask()'s [B, 1, L, c + L]

    @property
    def length(self) -> int:
        """Its positions in the packed sequence: c + B·L."""
        batch, _, width, _ = self.rows_mask.shape
        return self.prompt_length + batch * width


def prefix_attention(kernel, module, query, key, value, rows_mask, prefix_length: int, **kwargs) -> torch.Tensor:
    """One segment's packed [1, heads, c + B·L, d] query/key/value -> [1, c + B·L, heads, d] attention output.
    `rows_mask` is `rows_mask()`'s [B, 1, L, c + L] additive mask."""
    c, (batch, _, width, _) = prefix_length, rows_mask.shape

    def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # torch.split, not slicing: its backward is one cat, where a slice's fills a zero tensor of the whole size
        prompt, rows = t.split([c, batch * width], dim=2)
        return prompt, rows[0].unflatten(1, (batch, width)).transpose(0, 1)

    (q_p, q_x), (k_p, k_x), (v_p, v_x) = split(query), split(key), split(value)
    causal = torch.full((c, c), torch.finfo(query.dtype).min, dtype=query.dtype, device=query.device).triu(1)
    out_p = grouped_attention(kernel, module, q_p, k_p, v_p, causal[None, None], **kwargs)
    keys = torch.cat([k_p.expand(batch, -1, -1, -1), k_x], dim=2)
    values = torch.cat([v_p.expand(batch, -1, -1, -1), v_x], dim=2)
    out_x = grouped_attention(kernel, module, q_x, keys, values, rows_mask, **kwargs)
    return torch.cat([out_p, out_x.reshape(1, batch * width, *out_x.shape[2:])], dim=1)


class _OneGroup:
    """An attention module as the kernel sees it once its query heads are folded onto their key/value heads."""
    num_key_value_groups = 1

    def __init__(self, module: torch.nn.Module):
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def grouped_attention(kernel, module, query, key, value, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    """[b, heads, q, d] queries over [b, kv_heads, k, d] keys/values -> [b, q, heads, d]. With grouped
    keys (kv_heads < heads) the g query heads of each key/value head run as one of g·q queries: a
    kernel given an explicit mask would otherwise copy every key and value g times, and sum their
    gradients back, in every layer."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups == 1:
        return kernel(module, query, key, value, mask, **kwargs)[0]
    batch, heads, length, dim = query.shape
    folded = query.reshape(batch, heads // groups, groups * length, dim)  # head h = kv · g + r -> row r · q + i
    out, _ = kernel(_OneGroup(module), folded, key, value, mask.repeat(1, 1, groups, 1), **kwargs)
    return out.unflatten(1, (groups, length)).permute(0, 2, 3, 1, 4).reshape(batch, length, heads, dim)


class LastLayerReads:
    """Runs the last layer's output projection and MLP only at the positions read after it, during a
    packed forward. The layer's attention call sets them (inside a checkpointed recompute too, where
    the layer's own hooks do not run); its output projection and MLP narrow their input to them and
    widen their output back with zeros: the other positions, never read, keep only the residual."""

    def __init__(self):
        self.positions: torch.Tensor | None = None
        self.length = 0

    def narrow(self, module: torch.nn.Module, args: tuple):
        if self.positions is None:
            return None
        self.length = args[0].shape[1]
        return (args[0][:, self.positions], *args[1:])

    def widen(self, module: torch.nn.Module, args: tuple, output: torch.Tensor):
        if self.positions is None:
            return None
        full = output.new_zeros(output.shape[0], self.length, output.shape[-1])
        return full.index_copy(1, self.positions, output)


LAST_LAYER_READS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # last layer's attention -> its reads


def read_only_modules(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The last layer's output projection and MLP: what the shared path runs only at the positions read
    after that layer. Empty for a model not built as layers of (self_attn with o_proj, mlp)."""
    layers = getattr(model.base_model, "layers", None)
    layer = layers[-1] if layers else None
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attention is None or mlp is None or not hasattr(attention, "o_proj"):
        return []
    return [attention.o_proj, mlp]


def _read_only_where_needed(model: PreTrainedModel) -> None:
    modules = read_only_modules(model)
    if not modules or (attention := model.base_model.layers[-1].self_attn) in LAST_LAYER_READS:
        return
    reads = LAST_LAYER_READS[attention] = LastLayerReads()
    for module in modules:
        module.register_forward_pre_hook(reads.narrow)
        module.register_forward_hook(reads.widen)


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


def decide(choice: str, config: PretrainedConfig) -> bool:
    """Whether a run with --shared_prefix `choice` computes the prompt once per batch, by the backbone's config
    alone. It is proven (tests/test_shared_prefix.py) for every decoder-only backbone type MODEL_TYPES lists, on
    every ZeRO stage, quantized or not, with or without gradient checkpointing: `auto` takes it there and the
    standard path elsewhere; `true` where it is not proven is an error rather than an assumption."""
    why = refusal(config) if choice != "false" else None
    if why and choice == "true":
        raise LrptError(f"--shared_prefix: {why}; drop --shared_prefix")
    return choice != "false" and why is None


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
    _read_only_where_needed(model)
    return None


@dataclass
class Segment:
    """One run's micro-batch behind its prompt, as a packed forward takes it."""
    prompt: torch.Tensor  # [c, e], in the rows' dtype
    tokens: torch.Tensor  # [B, L, e]: the rows' input embeddings
    attention_mask: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L]: -100 where nothing is predicted

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, Packed]:
        """Its part of the packed sequence: embeddings [c + B·L, e], their position ids (the standard path's), and
        what attention needs of it."""
        batch, width, embed = self.tokens.shape
        c = self.prompt.shape[0]
        columns = torch.arange(width, device=self.tokens.device)
        positions = torch.cat([torch.arange(c, device=columns.device), c + columns.repeat(batch)])
        return (torch.cat([self.prompt, self.tokens.reshape(batch * width, embed)]), positions,
                Packed(c, rows_mask(self.attention_mask, c, self.tokens.dtype)))


@dataclass
class Read:
    """A segment's logits at the positions that predict its targets, the targets, and the row of each."""
    logits: torch.Tensor  # [T, V], float32
    wanted: torch.Tensor  # [T]
    rows: torch.Tensor  # [T]

    def loss(self) -> torch.Tensor:
        """The backbone's own loss: the mean token cross-entropy over the targets."""
        return torch.nn.functional.cross_entropy(self.logits, self.wanted)


def packed_logits(model: PreTrainedModel, segments: list[Segment]) -> list[Read]:
    """Every segment's logits at the positions that predict its targets, from one forward over the packed sequence
    [P_1, rows_1, P_2, rows_2, ...]. The head runs only where read."""
    parts = [segment.packed() for segment in segments]
    wanted = [targets(segment.labels) for segment in segments]
    starts = itertools.accumulate((packed.length for _, _, packed in parts), initial=0)
    reads = [start + packed.prompt_length + where for start, (_, _, packed), (where, _) in zip(starts, parts, wanted)]
    keep = torch.cat(reads)
    # a 4D attention_mask is taken as prepared, so transformers builds no mask over the whole packed sequence;
    # the masks that apply travel with the segments
    prepared = torch.empty(1, 1, 0, 0, dtype=segments[0].tokens.dtype, device=keep.device)
    out = model(inputs_embeds=torch.cat([e for e, _, _ in parts]).unsqueeze(0), attention_mask=prepared,
                position_ids=torch.cat([p for _, p, _ in parts]).unsqueeze(0),
                prefix_segments=tuple(packed for _, _, packed in parts), prefix_reads=keep, logits_to_keep=keep,
                use_cache=False)
    logits = out.logits[0].float().split([len(r) for r in reads])
    return [Read(part, targets_, torch.div(where, segment.tokens.shape[1], rounding_mode="floor"))
            for part, (where, targets_), segment in zip(logits, wanted, segments)]


def targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target token is predicted from (flat row positions) and the tokens themselves."""
    if (labels[:, 0] != -100).any():
        raise ValueError("shared_prefix: the first input token must not be a target (it would be predicted "
                         "from the prompt's last position); lrpt's data always starts with the source")
    wanted = labels[:, 1:] != -100
    rows, columns = wanted.nonzero(as_tuple=True)
    return rows * labels.shape[1] + columns, labels[:, 1:][wanted]
