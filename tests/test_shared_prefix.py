"""--shared_prefix: the prompt's keys/values computed once per step equal the standard path."""
from __future__ import annotations

import pytest
import torch

from lrpt import methods
from lrpt.trainer.backbone import load_backbone
from lrpt.trainer.config import RunConfig
from lrpt.trainer.errors import LrptError
from lrpt.trainer.loop import check_run, train
from lrpt.trainer.prompted import PromptedModel

METHODS = ["pt", "dpt", "lopt1", "lopt2", "lamp", "residual"]
OPTIONS = {"lamp": {"rank": 4, "pool": 2}, "residual": {"bottleneck": 16}}


def batch(left: bool) -> dict[str, torch.Tensor]:
    """Three rows of different lengths, padded on one side; labels -100 over source and pads."""
    g = torch.Generator().manual_seed(0)
    lengths, width = (9, 4, 6), 9
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    labels = torch.full((3, width), -100)
    for i, n in enumerate(lengths):
        span = slice(width - n, width) if left else slice(0, n)
        ids[i, span] = torch.randint(3, 250, (n,), generator=g)
        mask[i, span] = 1
        target = slice(span.stop - 2, span.stop)  # the last two tokens are the answer
        labels[i, target] = ids[i, target]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
@pytest.mark.parametrize("method", METHODS)
def test_shared_prefix_equals_standard_path(method, left, tiny_llama_dir):
    backbone = load_backbone(tiny_llama_dir)
    prompt = methods.build(method, 6, backbone.embed_dim, init="random" if method in ("pt", "lamp", "residual") else None,
                           generator=torch.Generator().manual_seed(1), **OPTIONS.get(method, {}))
    results = []
    for shared in (False, True):
        model = PromptedModel(backbone.model, prompt, False, shared_prefix=shared).train()
        loss = model(**batch(left)).loss
        results.append((loss.detach(), torch.autograd.grad(loss, list(prompt.parameters()))))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)  # fp32, different summation order


def test_training_with_shared_prefix_follows_the_same_curve(tiny_llama_dir, memorise_dir, tmp_path):
    curves, paths = [], []
    for shared in ("false", "auto"):  # auto takes the shared path on a plain decoder-only run
        cfg = RunConfig(model=tiny_llama_dir, data_dir=str(memorise_dir), output_dir=str(tmp_path / str(shared)),
                        method="dpt", prompt_length=8, max_steps=8, per_device_train_batch_size=4,
                        progress=False, shared_prefix=shared)
        report = train(cfg).report
        curves.append(report["train"]["loss_curve"])
        paths.append(report["shared_prefix"])
    assert paths == [False, True]
    # the first steps agree to fp32 noise; Adam at lr 0.3 then amplifies that noise a little
    torch.testing.assert_close(curves[1][:3], curves[0][:3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(curves[1], curves[0], rtol=1e-2, atol=1e-3)
    assert curves[1][-1] < curves[1][0]


@pytest.mark.parametrize("flags, message", [
    ({"model": "tiny-t5"}, "encoder-decoder"),
    ({"gradient_checkpointing": True}, "gradient checkpointing"),
    ({"deepspeed": "ds_configs/zero3.json"}, "ZeRO-3"),
])
def test_shared_prefix_refusals(flags, message):
    cfg = RunConfig(**{"model": "tiny-llama", "shared_prefix": True, **flags})
    with pytest.raises(LrptError, match=message):
        check_run(cfg)


@pytest.mark.parametrize("flags, expected", [
    ({}, True),
    ({"shared_prefix": "false"}, False),
    ({"model": "tiny-t5"}, False),
    ({"gradient_checkpointing": True}, False),
    ({"deepspeed": "ds_configs/zero3.json"}, False),
    ({"load_in_8bit": True}, False),
    ({"deepspeed": "ds_configs/zero2.json"}, True),
])
def test_shared_prefix_auto_takes_it_where_proven(flags, expected):
    from lrpt.trainer.backbone import resolve_config
    from lrpt.trainer.loop import check_shared_prefix

    cfg = RunConfig(**{"model": "tiny-llama", **flags})
    assert cfg.shared_prefix == flags.get("shared_prefix", "auto")
    assert check_shared_prefix(cfg, resolve_config(cfg.model)) is expected


@pytest.mark.parametrize("value, expected", [(True, "true"), (False, "false"), ("on", "true"), ("AUTO", "auto")])
def test_shared_prefix_spellings(value, expected):
    assert RunConfig(shared_prefix=value).shared_prefix == expected
    with pytest.raises(LrptError, match="auto, true or false"):
        RunConfig(shared_prefix="sometimes")
