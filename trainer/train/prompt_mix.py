"""Several fixed prompts over one frozen backbone: every input answered with every run's prompt in one pass.

`lrpt predict runs/a runs/b runs/c` asks R finished runs of one backbone the same questions. Only the prompt
differs between them, so rather than loading the backbone R times and running R passes, each batch of
examples goes through the backbone once, every example repeated behind the prompt of each run that answers
it. Each row is laid out exactly as its run alone lays it out (model.prompted):
- rank scoring, both kinds, and T5 generation: [P_k, text] padded after its end (mask 0 on pads; decoder-only
  labels -100 over the prompt), train.fused's `fused_rows`, as fused training lays out the rows of
  several runs;
- decoder-only generation: (pads, P_k, text), every pad first (`pads_first`), because HF generation derives
  positions from the attention mask.
Prompts of different lengths (LAMP's pooling, another c) mix: only the padding differs. The prompts are dense
matrices (the method's output P, c' x e), so nothing here depends on a method. There is no shared prefix: one
batch carries a different prompt per run, so every row takes the standard path (the prompt with every row).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..backbone.load import Backbone
from ..model.prompted import greedy_settings, pads_first, summed_log_likelihood
from ..model.rows import lay_out, pad_rows
from .data import Encoder, collate
from .fused import backbone_logits, fused_rows


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def generation_rows(prompts: Sequence[torch.Tensor], batches: Sequence[dict], embed: nn.Module,
                    is_encoder_decoder: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and mask to generate from. T5: [P_k, text] right-padded (batches right-padded). Decoder-only
    (batches left-padded): (pads, P_k, text), every pad first, as `PromptedModel.generate` re-orders its rows;
    runs of another prompt length get more pads in front."""
    laid = [lay_out(prompt, embed(batch["input_ids"]), batch["attention_mask"])[:2]
            for prompt, batch in zip(prompts, batches)]
    if is_encoder_decoder:
        width = max(e.shape[1] for e, _ in laid)
        return pad_rows([e for e, _ in laid], width), pad_rows([m for _, m in laid], width)
    laid = [pads_first(e, m, prompt.shape[0]) for (e, m), prompt in zip(laid, prompts)]
    width = max(e.shape[1] for e, _ in laid)
    return pad_rows([e for e, _ in laid], width, left=True), pad_rows([m for _, m in laid], width, left=True)


@torch.no_grad()
def label_log_likelihoods(backbone: Backbone, prompts: Sequence[torch.Tensor], batches: Sequence[dict]) -> torch.Tensor:
    """Sum of log p(label tokens) of every row of `batches[k]` behind `prompts[k]`, rows in that order, from ONE
    forward of the backbone: what `PromptedModel.label_log_likelihood` of each run alone gives."""
    model, enc_dec = backbone.model, backbone.is_encoder_decoder
    embed = model.get_input_embeddings()
    batches = [_to(b, embed.weight.device) for b in batches]
    embeds, mask, labels = fused_rows([(p.to(embed.weight.device), None, b) for p, b in zip(prompts, batches)],
                                      embed, enc_dec)
    logits = backbone_logits(model, embeds, mask, labels, enc_dec).float()
    return summed_log_likelihood(logits, labels, enc_dec)


@torch.no_grad()
def generate_rows(backbone: Backbone, prompts: Sequence[torch.Tensor], batches: Sequence[dict],
                  max_new_tokens: int) -> torch.Tensor:
    """Greedy new tokens of every row of `batches[k]` behind `prompts[k]`, rows in that order, from ONE `generate`
    call, with `PromptedModel.generate`'s settings (padding is never an answer)."""
    model, tokenizer = backbone.model, backbone.tokenizer
    embed = model.get_input_embeddings()
    batches = [_to(b, embed.weight.device) for b in batches]
    embeds, mask = generation_rows([p.to(embed.weight.device) for p in prompts], batches, embed,
                                   backbone.is_encoder_decoder)
    kwargs = {**greedy_settings(model), "max_new_tokens": max_new_tokens, "synced_gpus": False,
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    return model.generate(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **kwargs)


def _by_run(items: list, answered_by: Sequence[Sequence[int]], runs: int, example=lambda item: item) -> list[list]:
    """`items` of one batch split by the run that answers them (an item goes to each of its example's runs)."""
    return [[item for item in items if k in answered_by[example(item)]] for k in range(runs)]


def score_candidates(backbone: Backbone, prompts: Sequence[torch.Tensor], rows, answered_by: Sequence[Sequence[int]],
                     encoder: Encoder, batch_size: int, progress: bool = False) -> dict[tuple[int, int], list[float]]:
    """(example, run) -> the log-likelihood of each candidate answer, for every run k in `answered_by[example]`.
    Batched as `rank_classify`: `batch_size` (example, candidate) pairs per forward, each pair behind each of its
    runs' prompts, so a forward holds up to batch_size x R rows."""
    candidates, sources = rows["candidates"], rows["source"]
    pairs = [(i, j) for i in range(len(rows)) for j in range(len(candidates[i]))]
    scores = {(i, k): [float("-inf")] * len(candidates[i]) for i in range(len(rows)) for k in answered_by[i]}
    for start in tqdm(range(0, len(pairs), batch_size), desc=f"predict (rank, {len(prompts)} runs)", leave=False,
                      disable=not progress):
        chunk = pairs[start:start + batch_size]
        encoded = {(i, j): encoder.pair(sources[i], candidates[i][j]) for i, j in chunk}
        groups = _by_run(chunk, answered_by, len(prompts), example=lambda pair: pair[0])
        used = [k for k, group in enumerate(groups) if group]
        batches = [collate([encoded[pair] for pair in groups[k]], encoder.tokenizer.pad_token_id) for k in used]
        values = label_log_likelihoods(backbone, [prompts[k] for k in used], batches).tolist()
        for (k, (i, j)), value in zip([(k, pair) for k in used for pair in groups[k]], values):
            scores[(i, k)][j] = value
    return scores


def rank_classify_many(backbone: Backbone, prompts: Sequence[torch.Tensor], rows, answered_by: Sequence[Sequence[int]],
                       encoder: Encoder, batch_size: int, progress: bool = False) -> dict[tuple[int, int], str]:
    """(example, run) -> the candidate that run scores highest (the first of equals, as `rank_classify`)."""
    scores = score_candidates(backbone, prompts, rows, answered_by, encoder, batch_size, progress)
    candidates = rows["candidates"]
    return {(i, k): candidates[i][max(range(len(s)), key=s.__getitem__)] for (i, k), s in scores.items()}


def generate_many(backbone: Backbone, prompts: Sequence[torch.Tensor], rows, answered_by: Sequence[Sequence[int]],
                  batch_size: int, max_new_tokens: int, progress: bool = False) -> dict[tuple[int, int], str]:
    """(example, run) -> the greedy answer, `rows` tokenized for generation. Batched as `generate`: `batch_size`
    consecutive examples per `generate` call, each behind each of its runs' prompts (up to batch_size x R rows)."""
    tokenizer, left_pad = backbone.tokenizer, not backbone.is_encoder_decoder
    texts: dict[tuple[int, int], str] = {}
    for start in tqdm(range(0, len(rows), batch_size), desc=f"predict (generate, {len(prompts)} runs)", leave=False,
                      disable=not progress):
        groups = _by_run(list(range(start, min(start + batch_size, len(rows)))), answered_by, len(prompts))
        used = [k for k, group in enumerate(groups) if group]
        batches = [collate([rows[i] for i in groups[k]], tokenizer.pad_token_id, left_pad=left_pad) for k in used]
        out = generate_rows(backbone, [prompts[k] for k in used], batches, max_new_tokens)
        for (k, i), text in zip([(k, i) for k in used for i in groups[k]],
                                tokenizer.batch_decode(out, skip_special_tokens=True)):
            texts[(i, k)] = text.strip()
    return texts
