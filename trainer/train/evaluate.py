"""Evaluation on a held-out split: free generation or rank classification, then the task's metric.

Both modes split the examples across ranks and give every rank the same number of forwards:
under ZeRO-3 each forward gathers parameters from all ranks, so a rank that stopped early would
leave the others waiting forever.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...eval.tasks import Task
from ..model.prompted import PromptedModel
from ..runtime import distributed
from .data import Encoder, collate, eval_batches

DECODING = ("generate", "rank")


def generate(model: PromptedModel, rows, tokenizer, batch_size: int, max_new_tokens: int, synced_gpus: bool,
             progress: bool) -> dict[int, str]:
    """Greedy answers of this rank's share of `rows` (tokenized for generation), by row index."""
    texts: dict[int, str] = {}
    batches = eval_batches(rows, batch_size, tokenizer.pad_token_id, left_pad=not model.is_encoder_decoder,
                           rank=distributed.rank(), world_size=distributed.world_size())
    for idx, batch in tqdm(list(batches), desc="eval (generate)", leave=False, disable=not progress):
        out = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                             synced_gpus=synced_gpus, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
            if i >= 0:
                texts[i] = text.strip()
    return texts


def rank_classify(model: PromptedModel, rows, encoder: Encoder, batch_size: int, progress: bool) -> dict[int, str]:
    """Score every candidate of this rank's rows; the most likely one is the answer."""
    rank, world = distributed.rank(), distributed.world_size()
    candidates = rows["candidates"]
    sources = rows["source"]
    share = {r: [(i, j) for i in range(r, len(rows), world) for j in range(len(candidates[i]))] for r in range(world)}
    pairs = share[rank]
    width = max(len(p) for p in share.values())
    pairs = pairs + [(-1, 0)] * (width - len(pairs))  # same number of forwards on every rank
    scores: dict[int, list[float]] = {}
    steps = range(0, width, batch_size)
    for start in tqdm(steps, desc="eval (rank)", leave=False, disable=not progress):
        chunk = pairs[start:start + batch_size]
        encoded = [encoder.pair(sources[max(i, 0)], candidates[max(i, 0)][j]) for i, j in chunk]
        batch = collate(encoded, encoder.tokenizer.pad_token_id)
        with torch.no_grad():
            ll = model.label_log_likelihood(**batch).tolist()
        for (i, j), value in zip(chunk, ll):
            if i >= 0:
                scores.setdefault(i, [float("-inf")] * len(candidates[i]))[j] = value
    return {i: candidates[i][max(range(len(s)), key=s.__getitem__)] for i, s in scores.items()}


def evaluate(model: PromptedModel, rows, task: Task, encoder: Encoder, decoding: str, batch_size: int,
             synced_gpus: bool, progress: bool = True, predictions_file: Path | None = None) -> dict:
    """Metrics of the task on `rows`; `unparsable` counts generated answers that name no answer
    (they score as wrong). Rank 0 writes every prediction to `predictions_file` (JSON lines)."""
    model.eval()
    show = progress and distributed.is_main()
    if decoding == "generate":
        mine = generate(model, rows, encoder.tokenizer, batch_size, encoder.max_target_length, synced_gpus, show)
    else:
        mine = rank_classify(model, rows, encoder, batch_size, show)
    model.train()
    predictions: dict[int, str] = {}
    for part in distributed.gather(mine):
        predictions.update(part)
    ordered = [predictions[i] for i in range(len(rows))]
    examples = [rows[i] for i in range(len(rows))]
    valid = [task.is_valid(p, e) for p, e in zip(ordered, examples)]
    if predictions_file is not None and distributed.is_main():
        with predictions_file.open("w") as f:
            for i, (p, e, ok) in enumerate(zip(ordered, examples, valid)):
                f.write(json.dumps({"index": i, "group": e["group"], "prediction": p, "valid": ok,
                                    "answers": e["answers"]}) + "\n")
    metrics = task.metrics(ordered, examples)
    metrics["unparsable"] = valid.count(False)
    metrics["examples"] = len(rows)
    return metrics
