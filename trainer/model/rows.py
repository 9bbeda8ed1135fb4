"""The one row layout: a prompt P (c' x e) before each row's token embeddings, [P, text], the attention mask
extended by ones over P and, for a decoder-only backbone, the labels ignored (-100) over P; a method's token
offsets (DePT) added to the tokens' embeddings first. PromptedModel, fused groups and several prompts answering at
once all lay their rows out here, so a row is the same wherever it runs."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def lay_out(prompt: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None,
            is_encoder_decoder: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Embeddings [P, tokens], the mask over them and the labels (T5's stay the decoder's own)."""
    rows, length = tokens.shape[0], prompt.shape[0]
    embeds = torch.cat([prompt.to(tokens.dtype).unsqueeze(0).expand(rows, -1, -1), tokens], dim=1)
    mask = torch.cat([mask.new_ones(rows, length), mask], dim=1)
    if labels is not None and not is_encoder_decoder:
        labels = torch.cat([labels.new_full((rows, length), -100), labels], dim=1)
    return embeds, mask, labels


def token_embeddings(embed: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                     offsets: torch.Tensor | None = None) -> torch.Tensor:
    """The rows' token embeddings, a method's offsets added by each token's position within its row (its count of
    real tokens before it, so left- and right-padded rows agree); pads, which nothing attends to, stay as they are.
    A row longer than the offsets cover is refused."""
    tokens = embed(input_ids)
    if offsets is None:
        return tokens
    if mask.shape[1] > offsets.shape[0]:  # rows are padded to the batch's longest: its width, read without a sync
        raise ValueError(f"an input row of {mask.shape[1]} tokens is longer than the {offsets.shape[0]} positions the "
                         "method's token offsets cover: raise --offset_length or lower --max_source_length")
    position = mask.long().cumsum(dim=1) - 1
    added = offsets.to(tokens.dtype)[position.clamp(min=0)] * mask.unsqueeze(-1).to(tokens.dtype)
    return tokens + added


def pad_rows(tensors: list[torch.Tensor], width: int, value=0, left: bool = False) -> torch.Tensor:
    """Concatenated along the rows, each padded to `width` columns after its end (or before its start)."""
    def pad(t: torch.Tensor) -> tuple[int, ...]:
        extra = width - t.shape[1]
        return (0, 0) * (t.dim() - 2) + ((extra, 0) if left else (0, extra))

    return torch.cat([F.pad(t, pad(t), value=value) for t in tensors])
