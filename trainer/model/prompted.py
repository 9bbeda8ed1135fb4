"""PromptedModel: a frozen backbone with a trainable soft prompt before its input embeddings.

Encoder-decoder (T5): P goes before the encoder input, the encoder mask (and so the decoder's
cross-attention mask) is extended by c' ones; decoder labels are unchanged.
Decoder-only (LLaMA): P goes before the text; labels are -100 over the prompt (and the data
already masks the source). Training batches are right-padded (prompt, text, pads); generation
batches are left-padded and re-ordered to (pads, prompt, text), so no pad sits between prompt
and text and position ids follow the attention mask.
With `shared_prefix` (decoder-only) the prompt is computed once per batch: training and scoring
run the batch packed behind it in one forward (model.shared_prefix), generation pre-fills
its cache once and broadcasts it, laid out (prompt, pads, text).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...methods import PromptModule
from . import shared_prefix as shared_prefix_path
from .rows import lay_out, token_embeddings


class PromptedModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, prompt: PromptModule, is_encoder_decoder: bool,
                 shared_prefix: bool = False):
        super().__init__()
        if shared_prefix and (why := shared_prefix_path.install(backbone)):
            raise ValueError(f"shared_prefix: {why}")
        self.backbone = backbone
        self.prompt = prompt
        self.is_encoder_decoder = is_encoder_decoder
        self.shared_prefix = shared_prefix
        self._cache_kw = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only the prompt. The backbone is frozen and re-loaded from its own checkpoint; DeepSpeed's
        `exclude_frozen_parameters` would still keep tied aliases (T5's shared embedding and
        lm_head) because it walks `named_parameters()`, which lists a tied tensor once."""
        return self.prompt.state_dict(destination=destination, prefix=prefix + "prompt.", keep_vars=keep_vars)

    def _tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The rows' token embeddings, the method's token offsets added (DePT; most methods have none)."""
        return token_embeddings(self.backbone.get_input_embeddings(), input_ids, attention_mask,
                                self.prompt.token_offsets())

    def _lay_out(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        """The rows behind the prompt: embeddings [P, text], mask, labels."""
        tokens = self._tokens(input_ids, attention_mask)
        return lay_out(self.prompt(), tokens, attention_mask, labels, self.is_encoder_decoder)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        if self.shared_prefix:
            return self._forward_shared_prefix(input_ids, attention_mask, labels)
        embeds, mask, labels = self._lay_out(input_ids, attention_mask, labels)
        return self.backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)

    def _shared_read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     labels: torch.Tensor) -> shared_prefix_path.Read:
        """The logits that predict each target token, and the targets (model.shared_prefix)."""
        tokens = self._tokens(input_ids, attention_mask)
        segment = shared_prefix_path.Segment(self.prompt().to(tokens.dtype), tokens, attention_mask, labels)
        return shared_prefix_path.packed_logits(self.backbone, [segment])[0]

    def _forward_shared_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        """The prompt once per batch, the rows on top in the same pass; loss as the backbone's own
        (mean token cross-entropy over the targets)."""
        return CausalLMOutputWithPast(loss=self._shared_read(input_ids, attention_mask, labels).loss())

    def label_log_likelihood(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             labels: torch.Tensor) -> torch.Tensor:
        """Sum of log p(label tokens) per row, teacher-forced, prompt included (rank classification)."""
        if self.shared_prefix:
            read = self._shared_read(input_ids, attention_mask, labels)
            picked = read.logits.log_softmax(-1).gather(-1, read.wanted.unsqueeze(-1)).squeeze(-1)
            return picked.new_zeros(labels.shape[0]).index_add_(0, read.rows, picked)
        logits = self(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits.float()
        if not self.is_encoder_decoder:  # logits also cover the prompt
            logits = logits[:, logits.shape[1] - labels.shape[1]:]
        return summed_log_likelihood(logits, labels, self.is_encoder_decoder)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Greedy generation; returns only the new tokens. Decoder-only input must be left-padded."""
        embeds, mask, _ = self._lay_out(input_ids, attention_mask)
        if self.shared_prefix:  # the prompt pre-filled once, its cache broadcast to the batch: (prompt, pads, text)
            kwargs[self._cache_kw] = self._prompt_cache(embeds[:1, :self.prompt.output_length], embeds.shape[0])
        elif not self.is_encoder_decoder:
            embeds, mask = pads_first(embeds, mask, self.prompt.output_length)
        kwargs = {**greedy_settings(self.backbone), **kwargs}
        return self.backbone.generate(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **kwargs)

    def _prompt_cache(self, prompt: torch.Tensor, batch: int):
        """The prompt's key/value cache, computed for one row and broadcast (`expand`, a view) to
        `batch`: generation appends each row's own entries after it. Positions 0..c-1, as when the
        prompt directly follows the pads on the standard path."""
        prefix = self.backbone.base_model(inputs_embeds=prompt, use_cache=True)
        cache = getattr(prefix, "cache", None) or prefix.past_key_values
        for layer in cache.layers:
            layer.keys = layer.keys.expand(batch, -1, -1, -1)
            layer.values = layer.values.expand(batch, -1, -1, -1)
        return cache


def summed_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, is_encoder_decoder: bool) -> torch.Tensor:
    """Sum of log p(label token) per row, teacher-forced, -100 left out; `logits` cover the labels' positions
    (decoder-only: position t predicts t + 1)."""
    if not is_encoder_decoder:
        logits, labels = logits[:, :-1], labels[:, 1:]
    picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (labels != -100)).sum(-1)


def greedy_settings(backbone: PreTrainedModel) -> dict:
    """Generation settings every lrpt answer uses: greedy, and padding never an answer."""
    settings = {"do_sample": False}
    pad = backbone.generation_config.pad_token_id
    if pad is not None and pad != backbone.generation_config.eos_token_id:
        settings["suppress_tokens"] = [pad]
    return settings


def pads_first(embeds: torch.Tensor, mask: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-order rows laid out (prompt, left pads, text) to (left pads, prompt, text).

    Why: a causal model must see the prompt right before the text, and HF generation derives
    positions from the attention mask, which only works when every pad comes first.
    """
    batch, total = mask.shape
    pads = (mask[:, prompt_len:] == 0).sum(dim=1, keepdim=True)  # left pads per row
    j = torch.arange(total, device=mask.device).unsqueeze(0).expand(batch, -1)
    source = torch.where(j < pads, j + prompt_len, torch.where(j < pads + prompt_len, j - pads, j))
    embeds = embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    return embeds, mask.gather(1, source)
