"""Rank classification against a reference computed from the model's own loss."""
from __future__ import annotations

import pytest
import torch

from lrpt import methods
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.train.data import Encoder, collate
from lrpt.trainer.train.evaluate import rank_classify
from lrpt.trainer.model.prompted import PromptedModel


def prompted(model_dir: str) -> tuple[PromptedModel, Encoder]:
    backbone = load_backbone(model_dir)
    prompt = methods.build("pt", 4, backbone.embed_dim, init="random", generator=torch.Generator().manual_seed(1))
    model = PromptedModel(backbone.model, prompt, backbone.is_encoder_decoder).eval()
    return model, Encoder(backbone.tokenizer, backbone.is_encoder_decoder, 64, 16)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_sequence_log_likelihood_equals_loss_times_tokens(arch, backbone_dirs):
    model, encoder = prompted(backbone_dirs[arch])
    pairs = [("rte hypothesis: a premise: b", "entailment"), ("cb hypothesis: longer text here premise: x", "neutral")]
    batch = collate([encoder.pair(s, t) for s, t in pairs], encoder.tokenizer.pad_token_id)
    with torch.no_grad():
        scores = model.label_log_likelihood(**batch)
        for row, (s, t) in enumerate(pairs):  # one row at a time, no padding: HF's mean token loss
            single = collate([encoder.pair(s, t)], encoder.tokenizer.pad_token_id)
            n_tokens = (single["labels"] != -100).sum()
            loss = model(**single).loss
            torch.testing.assert_close(scores[row], -loss * n_tokens, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_rank_classify_picks_the_most_likely_candidate(arch, backbone_dirs):
    import datasets
    model, encoder = prompted(backbone_dirs[arch])
    rows = datasets.Dataset.from_list([
        {"source": "copa choice1: rain choice2: sun premise: wet question: cause",
         "candidates": ["choice1", "choice2"]},
        {"source": "record query: @placeholder won entities: Ann, Bob Smith, C",
         "candidates": ["Ann", "Bob Smith", "C"]},
    ])
    chosen = rank_classify(model, rows, encoder, batch_size=2, progress=False)
    for i, row in enumerate(rows):
        batch = collate([encoder.pair(row["source"], c) for c in row["candidates"]], encoder.tokenizer.pad_token_id)
        with torch.no_grad():
            scores = model.label_log_likelihood(**batch)
        assert chosen[i] == row["candidates"][int(scores.argmax())]
