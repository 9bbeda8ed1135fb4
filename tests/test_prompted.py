"""PromptedModel against a hand-built reference: masks, padding, generation, checkpointing."""
from __future__ import annotations

import pytest
import torch

from lrpt import methods
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.model.prompted import PromptedModel, pads_first


def prompted(model_dir: str, c: int = 5, **kw) -> PromptedModel:
    backbone = load_backbone(model_dir, **kw)
    prompt = methods.build("dpt", c, backbone.embed_dim, rank=3, generator=torch.Generator().manual_seed(0))
    return PromptedModel(backbone.model, prompt, backbone.is_encoder_decoder).eval()


def test_pads_first_reorders_rows():
    # rows laid out (prompt p0 p1, left pads, text); values are positions so the order is visible
    embeds = torch.arange(2 * 6, dtype=torch.float).view(2, 6, 1)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]])
    out, out_mask = pads_first(embeds, mask, prompt_len=2)
    assert out[0, :, 0].tolist() == [2, 3, 0, 1, 4, 5]
    assert out[1, :, 0].tolist() == [6, 7, 8, 9, 10, 11]
    assert out_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]


def test_causal_loss_equals_manual_reference(tiny_llama_dir):
    """Prompt before the text, labels -100 over the prompt: the same loss as computing it by hand."""
    model = prompted(tiny_llama_dir)
    ids = torch.randint(3, 250, (2, 7))
    labels = ids.clone()
    labels[:, :4] = -100  # the source
    out = model(ids, torch.ones_like(ids), labels=labels)
    embeds = torch.cat([model.prompt().expand(2, -1, -1), model.backbone.get_input_embeddings()(ids)], 1)
    logits = model.backbone(inputs_embeds=embeds).logits[:, 5:]  # positions of the text
    ref = torch.nn.functional.cross_entropy(logits[:, 3:-1].reshape(-1, logits.shape[-1]), ids[:, 4:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_batched_generation_equals_one_at_a_time(arch, backbone_dirs):
    """Padding (left for decoder-only) must not change any row's greedy output: the prompt enters at prefill only,
    and no pad comes between prompt and text."""
    model = prompted(backbone_dirs[arch])
    rows = [torch.randint(3, 250, (n,)) for n in (3, 9, 6)]
    width = max(len(r) for r in rows)
    left = not model.is_encoder_decoder

    def pad(r):
        return torch.cat([torch.zeros(width - len(r), dtype=torch.long), r] if left
                         else [r, torch.zeros(width - len(r), dtype=torch.long)])

    ids = torch.stack([pad(r) for r in rows])
    mask = torch.stack([pad(torch.ones_like(r)) for r in rows])
    batched = model.generate(ids, mask, max_new_tokens=6, min_new_tokens=6, pad_token_id=0, eos_token_id=1)
    for i, r in enumerate(rows):
        alone = model.generate(r[None], torch.ones_like(r)[None], max_new_tokens=6, min_new_tokens=6,
                               pad_token_id=0, eos_token_id=1)
        assert batched[i].tolist() == alone[0].tolist(), i


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_gradient_checkpointing_gives_same_loss_and_grad(arch, backbone_dirs):
    ids = torch.randint(3, 250, (2, 8))
    labels = torch.randint(3, 250, (2, 8 if arch == "llama" else 3))
    results = []
    for ckpt in (False, True):
        model = prompted(backbone_dirs[arch], gradient_checkpointing=ckpt).train()
        loss = model(ids, torch.ones_like(ids), labels=labels).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.prompt.parameters()]))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l0, l1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b)
        assert a.abs().sum() > 0
