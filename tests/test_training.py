"""End-to-end training of every method on tiny T5 and LLaMA backbones loaded from disk."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from lrpt import methods
from lrpt.trainer.config import RunConfig
from lrpt.trainer.loop import train

METHODS = ["pt", "dpt", "lopt1", "lopt2", "lamp", "residual"]


def run_config(model_dir: str, data_dir, out, **kw) -> RunConfig:
    base = dict(model=model_dir, data_dir=str(data_dir), output_dir=str(out), prompt_length=8,
                per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=50,
                warmup_ratio=0.0, logging_steps=100, progress=False, seed=0)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.parametrize("arch", ["t5", "llama"])
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_prompt_only(method, arch, backbone_dirs, memorise_dir, tmp_path):
    model_dir = backbone_dirs[arch]
    result = train(run_config(model_dir, memorise_dir, tmp_path / "run", method=method))
    report, model = result.report, result.model

    # the loss goes down on four memorisable rows
    curve = report["train"]["loss_curve"]
    assert len(curve) == 50
    assert sum(curve[-5:]) / 5 < 0.9 * curve[0], curve

    # the frozen backbone is bit-identical to what is on disk
    auto = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM
    on_disk = auto.from_pretrained(model_dir).state_dict()
    trained = model.backbone.state_dict()
    assert on_disk.keys() == trained.keys()
    for name, tensor in on_disk.items():
        assert torch.equal(tensor, trained[name]), name

    # the optimizer holds exactly the prompt parameters, and state for each of them
    optimizer = result.engine.optimizer
    prompt_params = {id(p) for p in model.prompt.parameters()}
    opt_params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert opt_params == prompt_params
    assert {id(p) for p in optimizer.state} == prompt_params
    assert report["trainable_params"] == sum(p.numel() for p in model.prompt.parameters())
    # AdamW keeps m and v (fp32) per prompt value, and a 4-byte step counter per prompt tensor
    n_tensors = len(list(model.prompt.parameters()))
    assert report["optimizer_state_bytes"] == 2 * 4 * report["trainable_params"] + 4 * n_tensors

    # save -> load into a differently seeded module gives the same prompt and the same outputs
    fresh = methods.build(method, 8, model.prompt.embed_dim, generator=torch.Generator().manual_seed(123),
                          **({"init": "random"} if method in ("pt", "lamp", "residual") else {}))
    assert not torch.equal(fresh.dense(), model.prompt.dense())
    fresh.load_state_dict(load_file(tmp_path / "run" / "prompt.safetensors"))
    torch.testing.assert_close(fresh.dense(), model.prompt.dense(), rtol=0, atol=0)
    dense = load_file(tmp_path / "run" / "prompt_dense.safetensors")["prompt"]
    torch.testing.assert_close(dense, model.prompt.dense(), rtol=0, atol=0)


def test_only_prompt_receives_gradients(tiny_t5_dir):
    from lrpt.trainer.backbone import load_backbone
    from lrpt.trainer.prompted import PromptedModel

    backbone = load_backbone(tiny_t5_dir)
    model = PromptedModel(backbone.model, methods.build("dpt", 6, backbone.embed_dim), True)
    ids = torch.randint(3, 200, (2, 9))
    loss = model(ids, torch.ones_like(ids), labels=torch.randint(3, 200, (2, 4))).loss
    loss.backward()
    assert all(p.grad is None for p in backbone.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt.parameters())


def test_bf16_backbone_with_fp32_optimizer_state(tiny_t5_dir, memorise_dir, tmp_path):
    from lrpt.trainer.meter import optimizer_state_tensors

    result = train(run_config(tiny_t5_dir, memorise_dir, tmp_path / "run", method="dpt", precision="bf16", max_steps=20))
    curve = result.report["train"]["loss_curve"]
    assert sum(curve[-3:]) / 3 < 0.95 * curve[0], curve
    backbone = result.model.backbone
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}
    on_disk = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir, dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(t, backbone.state_dict()[n]) for n, t in on_disk.items())
    state = optimizer_state_tensors(result.engine.optimizer)
    assert state and {t.dtype for t in state} <= {torch.float32}  # master weights and moments stay fp32
