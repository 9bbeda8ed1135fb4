"""Tokenize (source, target) pairs once with `datasets.map`, and batch them deterministically.

Batches depend only on (seed, epoch, rank, world size), so a resumed run sees exactly the
batches the uninterrupted run would have seen.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from ...eval.data import DataError, format_rows, load_split, row_examples
from ...eval.fewshot import sample_few_shot
from ...eval.splits import carve_dev
from ...eval.tasks import Task
from ..errors import LrptError


@dataclass
class RunData:
    train: datasets.Dataset
    dev: datasets.Dataset | None   # carved from train, for picking the best checkpoint
    val: datasets.Dataset          # the papers report it as the test set


def load_run_data(task: Task, data_dir: str | None, seed: int, few_shot: int | None = None, dev_size: float = 0,
                  max_train_samples: int | None = None, max_eval_samples: int | None = None,
                  draw: int | None = None) -> RunData:
    """Official rows -> (few-shot sample) -> (dev carved off) -> examples. The few-shot sample
    depends on (task, K, draw) alone, the draw being the seed unless given, so every method of a seed (or of a
    draw) sees the same rows. Every row of train and val is checked here (labels included): a data problem is one
    LrptError at its file:line."""
    try:
        return _run_data(task, data_dir, seed, few_shot, dev_size, max_train_samples, max_eval_samples,
                         seed if draw is None else draw)
    except DataError as exc:
        raise LrptError(str(exc)) from None


def _run_data(task, data_dir, seed, few_shot, dev_size, max_train_samples, max_eval_samples, draw) -> RunData:
    rows = load_split(task, "train", data_dir)
    val_rows = load_split(task, "val", data_dir)  # a missing val split is found before anything trains
    if few_shot:
        usable = [i for i, row in enumerate(rows) if row_examples(task, dict(row), train=True)]
        try:
            rows = sample_few_shot(rows, task.name, few_shot, draw, usable)
        except ValueError as exc:
            raise LrptError(f"--few_shot {few_shot}: {exc}") from None
    dev = None
    if dev_size:
        try:
            rows, dev = carve_dev(rows, dev_size, seed)
        except ValueError as exc:  # a count the training rows cannot spare (RunConfig.validate checked the rest)
            raise LrptError(f"--dev_size {dev_size:g}: {exc}") from None
        dev = format_rows(task, dev, labeled=True)
    train = format_rows(task, rows, train=True)
    val = format_rows(task, val_rows, labeled=True)
    if max_train_samples:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples:
        val = val.select(range(min(max_eval_samples, len(val))))
        dev = dev.select(range(min(max_eval_samples, len(dev)))) if dev is not None else None
    return RunData(train=train, dev=dev, val=val)


class Encoder:
    """Text -> token ids, the same way for training, generation and candidate scoring.

    Encoder-decoder: source (+eos) into the encoder, target (+eos) as decoder labels.
    Decoder-only: [bos] source, then " target" eos; labels are -100 over the source.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, is_encoder_decoder: bool,
                 max_source_length: int, max_target_length: int):
        self.tokenizer, self.is_encoder_decoder = tokenizer, is_encoder_decoder
        self.max_source_length, self.max_target_length = max_source_length, max_target_length

    def source(self, text: str) -> list[int]:
        tok = self.tokenizer
        if self.is_encoder_decoder:
            return tok(text, truncation=True, max_length=self.max_source_length)["input_ids"]
        ids = tok(text, add_special_tokens=False)["input_ids"][:self.max_source_length]
        return ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids

    def target(self, text: str) -> list[int]:
        tok = self.tokenizer
        if self.is_encoder_decoder:
            return tok(text, truncation=True, max_length=self.max_target_length)["input_ids"]
        return tok(" " + text, add_special_tokens=False)["input_ids"][:self.max_target_length - 1] + [tok.eos_token_id]

    def pair(self, source: str, target: str) -> dict[str, list[int]]:
        """input_ids and labels of one (source, target) pair, as the model trains on it."""
        src, tgt = self.source(source), self.target(target)
        if self.is_encoder_decoder:
            return {"input_ids": src, "labels": tgt}
        return {"input_ids": src + tgt, "labels": [-100] * len(src) + tgt}


def tokenize(rows: datasets.Dataset, encoder: Encoder, for_generation: bool = False) -> datasets.Dataset:
    """Add input_ids/labels to every row; for generation, input_ids is the source alone."""
    def encode(row: dict) -> dict:
        if for_generation:
            return {"input_ids": encoder.source(row["source"]), "labels": []}
        return encoder.pair(row["source"], row["target"])

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
