"""PromptedModel: a frozen backbone with a trainable soft prompt before its input embeddings.

Encoder-decoder (T5): P goes before the encoder input, the encoder mask (and so the decoder's
cross-attention mask) is extended by c' ones; decoder labels are unchanged.
Decoder-only (LLaMA): P goes before the text; labels are -100 over the prompt (and the data
already masks the source). Training batches are right-padded (prompt, text, pads); generation
batches are left-padded and re-ordered to (pads, prompt, text), so no pad sits between prompt
and text and position ids follow the attention mask.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PreTrainedModel

from lrpt.methods import PromptModule


class PromptedModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, prompt: PromptModule, is_encoder_decoder: bool,
                 shared_prefix: bool = False):
        super().__init__()
        if shared_prefix and is_encoder_decoder:
            raise ValueError("shared_prefix needs a decoder-only backbone: in a bidirectional encoder every input "
                             "token changes the prompt's hidden states, so there is nothing to share")
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

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cat[P, embed(input_ids)] and the mask extended by ones over the prompt."""
        tokens = self.backbone.get_input_embeddings()(input_ids)
        prompt = self.prompt().to(tokens.dtype)
        batch = input_ids.shape[0]
        embeds = torch.cat([prompt.unsqueeze(0).expand(batch, -1, -1), tokens], dim=1)
        ones = attention_mask.new_ones(batch, prompt.shape[0])
        return embeds, torch.cat([ones, attention_mask], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        if self.shared_prefix:
            return self._forward_shared_prefix(input_ids, attention_mask, labels)
        embeds, mask = self._embed(input_ids, attention_mask)
        if not self.is_encoder_decoder:
            ignore = labels.new_full((labels.shape[0], self.prompt.output_length), -100)
            labels = torch.cat([ignore, labels], dim=1)
        return self.backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)

    def _forward_shared_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        """Causal backbones: prompt tokens attend only to each other, so their keys/values are the
        same for every example. Run the prompt once (batch 1), broadcast its cache to the batch
        (`expand`, a view), then run the inputs on top; gradients reach the prompt through the cache.
        Logits cover the input positions only."""
        if (labels[:, 0] != -100).any():
            raise ValueError("shared_prefix: the first input token must not be a target (it would be predicted "
                             "from the prompt's last position); lrpt's data always starts with the source")
        tokens = self.backbone.get_input_embeddings()(input_ids)
        prompt = self.prompt().to(tokens.dtype)
        prefix = self.backbone.base_model(inputs_embeds=prompt.unsqueeze(0), use_cache=True)
        cache = getattr(prefix, "cache", None) or prefix.past_key_values
        batch = input_ids.shape[0]
        for layer in cache.layers:
            layer.keys = layer.keys.expand(batch, -1, -1, -1)
            layer.values = layer.values.expand(batch, -1, -1, -1)
        mask = torch.cat([attention_mask.new_ones(batch, prompt.shape[0]), attention_mask], dim=1)
        return self.backbone(inputs_embeds=tokens, attention_mask=mask, labels=labels, use_cache=True,
                             **{self._cache_kw: cache})

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Greedy generation; returns only the new tokens. Decoder-only input must be left-padded."""
        embeds, mask = self._embed(input_ids, attention_mask)
        if not self.is_encoder_decoder:
            embeds, mask = pads_first(embeds, mask, self.prompt.output_length)
        kwargs.setdefault("do_sample", False)
        pad = self.backbone.generation_config.pad_token_id
        if pad is not None and pad != self.backbone.generation_config.eos_token_id:
            kwargs.setdefault("suppress_tokens", [pad])  # padding is never an answer
        return self.backbone.generate(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **kwargs)


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
