"""Tokenize (source, target) pairs once with `datasets.map`, and batch them deterministically.

Batches depend only on (seed, epoch, rank, world size), so a resumed run sees exactly the
batches the uninterrupted run would have seen.
"""
from __future__ import annotations

from collections.abc import Iterator

import datasets
import torch
from transformers import PreTrainedTokenizerBase


def tokenize(rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, is_encoder_decoder: bool,
             max_source_length: int, max_target_length: int, for_generation: bool = False) -> datasets.Dataset:
    """Encoder-decoder: input_ids = source (+eos), labels = target (+eos).
    Decoder-only: input_ids = [bos] source target eos, labels -100 over the source; for
    generation, input_ids = [bos] source only."""
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id

    def encode(row: dict) -> dict:
        if is_encoder_decoder:
            source = tokenizer(row["source"], truncation=True, max_length=max_source_length)["input_ids"]
            target = tokenizer(row["target"], truncation=True, max_length=max_target_length)["input_ids"]
            return {"input_ids": source, "labels": target}
        source = tokenizer(row["source"], add_special_tokens=False)["input_ids"][:max_source_length]
        source = ([bos] if bos is not None else []) + source
        if for_generation:
            return {"input_ids": source, "labels": []}
        target = tokenizer(" " + row["target"], add_special_tokens=False)["input_ids"][:max_target_length - 1] + [eos]
        return {"input_ids": source + target, "labels": [-100] * len(source) + target}

    return rows.map(encode, desc="tokenize")


def collate(rows: list[dict], pad_id: int, left_pad: bool = False) -> dict[str, torch.Tensor]:
    """Pad to the longest row: input_ids with pad_id (mask 0), labels with -100."""
    def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        fill = [[value] * (width - len(s)) for s in seqs]
        return torch.tensor([f + s if left_pad else s + f for s, f in zip(seqs, fill)], dtype=torch.long)

    ids = [r["input_ids"] for r in rows]
    batch = {"input_ids": pad(ids, pad_id), "attention_mask": pad([[1] * len(s) for s in ids], 0)}
    if any(r["labels"] for r in rows):
        batch["labels"] = pad([r["labels"] for r in rows], -100)
    return batch


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_rows, generator=generator).tolist()


def train_batches(rows: datasets.Dataset, batch_size: int, pad_id: int, seed: int, epoch: int,
                  rank: int = 0, world_size: int = 1, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's micro-batches of one epoch (last partial global batch dropped), skipping `skip`."""
    order = epoch_order(len(rows), seed, epoch)
    global_batch = batch_size * world_size
    for start in range(skip * global_batch, len(order) - global_batch + 1, global_batch):
        mine = order[start + rank * batch_size: start + (rank + 1) * batch_size]
        yield collate([rows[i] for i in mine], pad_id)


def micro_batches_per_epoch(num_rows: int, batch_size: int, world_size: int) -> int:
    return num_rows // (batch_size * world_size)


def eval_batches(rows: datasets.Dataset, batch_size: int, pad_id: int, left_pad: bool,
                 rank: int = 0, world_size: int = 1) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(row indices, batch) for this rank's strided share, in order. Every rank gets the same
    number of batches (the last may repeat row 0, flagged by index -1), because under ZeRO-3
    every rank must take part in every forward."""
    mine = list(range(rank, len(rows), world_size))
    per_rank = -(-len(rows) // world_size)
    mine += [-1] * (per_rank - len(mine))
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        yield idx, collate([rows[max(i, 0)] for i in idx], pad_id, left_pad=left_pad)
