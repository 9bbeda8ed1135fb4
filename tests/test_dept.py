"""DePT and ULPT (methods/dept.py, methods/ulpt.py) against re-implementations written here from their papers' and
released code's descriptions, their papers' parameter counts, and two learning rates reaching AdamW by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lrpt import methods
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.errors import LrptError
from lrpt.trainer.model.prompted import PromptedModel
from lrpt.trainer.train.loop import setup, train, train_group
from lrpt.trainer.train.reopen import load_run
from test_fused import assert_same_run
from test_shared_prefix import batch as padded_batch


def dept(embed_dim: int, c: int = 5, rank: int = 4, length: int = 16, seed: int = 1) -> methods.PromptModule:
    """A DePT prompt whose update is not zero (B starts at zero: its first step would show nothing)."""
    g = torch.Generator().manual_seed(seed)
    prompt = methods.build("dept", c, embed_dim, rank=rank, alpha=8.0, offset_length=length, init="random",
                           generator=g)
    with torch.no_grad():
        prompt.b.copy_(torch.randn(prompt.b.shape, generator=g) * 0.5)
    return prompt


def rows(arch: str) -> dict[str, torch.Tensor]:
    """Two right-padded rows (9 and 5 tokens); T5's labels are the decoder's, LLaMA's the row's last two tokens."""
    ids = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    if arch == "t5":
        labels = torch.randint(3, 250, (2, 3), generator=torch.Generator().manual_seed(1))
    else:
        labels = torch.full_like(ids, -100)
        labels[0, 7:], labels[1, 3:5] = ids[0, 7:], ids[1, 3:5]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def dept_as_its_code_does(model, prompt, batch: dict, is_encoder_decoder: bool, pad_id: int):
    """DePT's forward as its code and paper describe it, written without lrpt: every input padded to max_length,
    inputs_embeds += α/√r · (A @ B) at every position (pads included), then the prompt prepended and the mask
    extended by ones over it."""
    c, length = prompt.prompt.shape[0], prompt.a.shape[0]
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    extra = length - ids.shape[1]
    ids, mask = F.pad(ids, (0, extra), value=pad_id), F.pad(mask, (0, extra))
    embeds = model.get_input_embeddings()(ids) + (8.0 / math.sqrt(prompt.a.shape[1])) * (prompt.a @ prompt.b)
    embeds = torch.cat([prompt.prompt.expand(len(ids), -1, -1), embeds], dim=1)
    mask = torch.cat([torch.ones(len(ids), c, dtype=mask.dtype), mask], dim=1)
    if not is_encoder_decoder:
        labels = torch.cat([torch.full((len(ids), c), -100), F.pad(labels, (0, extra), value=-100)], dim=1)
    return model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_dept_forward_equals_its_description(arch, backbone_dirs):
    backbone = load_backbone(backbone_dirs[arch])
    prompt = dept(backbone.embed_dim)
    batch = rows(arch)
    ours = PromptedModel(backbone.model, prompt, backbone.is_encoder_decoder)(**batch).loss
    grads = torch.autograd.grad(ours, [prompt.prompt, prompt.a, prompt.b])
    reference = dept_as_its_code_does(backbone.model, prompt, batch, backbone.is_encoder_decoder,
                                      backbone.tokenizer.pad_token_id)
    expected = torch.autograd.grad(reference, [prompt.prompt, prompt.a, prompt.b])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected):
        assert want.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # the update matters: the same prompt without it scores the rows otherwise
    with torch.no_grad():
        prompt.b.zero_()
        assert not torch.isclose(PromptedModel(backbone.model, prompt, backbone.is_encoder_decoder)(**batch).loss,
                                 reference)


def test_dept_offsets_follow_each_tokens_position_whatever_the_padding(tiny_llama_dir):
    """Rows generated from left-padded (how decoder-only rows are generated) answer as each row alone, unpadded: row
    i of the update goes to each row's i-th token, not to column i; the update changes the answers."""
    backbone = load_backbone(tiny_llama_dir)
    prompt = dept(backbone.embed_dim)
    model = PromptedModel(backbone.model, prompt, False).eval()
    left = padded_batch(True)
    together = model.generate(left["input_ids"], left["attention_mask"], max_new_tokens=4)
    for i, (ids, mask) in enumerate(zip(left["input_ids"], left["attention_mask"])):
        alone = model.generate(ids[mask.bool()][None], torch.ones(1, int(mask.sum()), dtype=torch.long),
                               max_new_tokens=4)
        assert together[i].tolist() == alone[0].tolist()
    with torch.no_grad():
        prompt.b.zero_()
    assert model.generate(left["input_ids"], left["attention_mask"], max_new_tokens=4).tolist() != together.tolist()


def test_dept_on_the_shared_prefix_equals_the_standard_path(tiny_llama_dir):
    backbone = load_backbone(tiny_llama_dir)
    prompt = dept(backbone.embed_dim)
    results = []
    for shared in (False, True):
        loss = PromptedModel(backbone.model, prompt, False, shared_prefix=shared).train()(**padded_batch(False)).loss
        results.append((loss.detach(), torch.autograd.grad(loss, [prompt.prompt, prompt.a, prompt.b])))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_a, grads_b):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


def test_a_row_longer_than_the_offsets_is_refused(tiny_llama_dir, tmp_path):
    backbone = load_backbone(tiny_llama_dir)
    model = PromptedModel(backbone.model, dept(backbone.embed_dim, length=6), False)
    with pytest.raises(ValueError, match="input row of 9 tokens is longer than the 6 positions"):
        model(**rows("llama"))
    cfg = RunConfig(model=tiny_llama_dir, method="dept", offset_length=100, max_source_length=96, task="rte",
                    output_dir=str(tmp_path / "run"))
    with pytest.raises(LrptError, match="cover 100 input positions .* a row can reach 112 .* --offset_length 112"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run directory was claimed


def test_ulpt_prompt_equals_its_description():
    """P = scale ⊙ (Z·W) + shift, W (r × e) frozen and Xavier-uniform, written with numpy from the module's
    tensors; n·r + 2e trainable parameters; a step moves Z, scale and shift and never W."""
    n, e, r = 7, 64, 3
    prompt = methods.build("ulpt", n, e, rank=r, generator=torch.Generator().manual_seed(0))
    z, w = prompt.z.detach().numpy(), prompt.projection.numpy()
    assert w.shape == (r, e) and np.abs(w).max() <= math.sqrt(6 / (r + e))
    assert np.abs(w).max() > 0.9 * math.sqrt(6 / (r + e))  # uniform up to the bound, not a narrower draw
    with torch.no_grad():
        prompt.scale.uniform_(0.5, 1.5)
        prompt.shift.uniform_(-0.1, 0.1)
    expected = prompt.scale.detach().numpy()[None] * (z @ w) + prompt.shift.detach().numpy()[None]
    np.testing.assert_allclose(prompt().detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert prompt.num_trainable_params() == n * r + 2 * e
    assert "projection" in prompt.state_dict() and not prompt.projection.requires_grad
    before = {k: v.clone() for k, v in prompt.state_dict().items()}
    optimizer = torch.optim.AdamW(prompt.parameters(), lr=0.1)
    prompt().square().sum().backward()
    optimizer.step()
    after = prompt.state_dict()
    assert torch.equal(after["projection"], before["projection"])
    assert all(not torch.equal(after[k], before[k]) for k in ("z", "scale", "shift"))


def test_parameter_counts_of_the_papers_settings():
    """DePT keeps vanilla prompt tuning's count (its abstract; T5-Base, PT with 100 tokens: 76,800): m·e + r·(s + e)
    with its released settings (m, r, s) = (60, 30, 256) and (40, 45, 256); ULPT's n·r + 2e with its README's
    n = 100, r = 2 on T5-Base (e = 768): 1,736."""
    def count(name: str, c: int, **options) -> int:
        return methods.build(name, c, 768, init="random", **options).num_trainable_params() if name != "ulpt" else \
            methods.build(name, c, 768, **options).num_trainable_params()

    assert count("pt", 100) == 100 * 768 == 76_800
    assert count("dept", 60, rank=30, offset_length=256) == 60 * 768 + 30 * (256 + 768) == 76_800
    assert count("dept", 40, rank=45, offset_length=256) == 76_800
    assert count("ulpt", 100, rank=2) == 100 * 2 + 2 * 768 == 1_736


def step_deltas(session, steps: int) -> list[dict[str, torch.Tensor]]:
    """Each named prompt tensor's change over each of `steps` optimizer steps of the session's own engine."""
    import deepspeed

    prompt, engine = session.prompt, session.engine
    batches = session.batches(0)

    def values() -> dict[str, torch.Tensor]:
        with deepspeed.zero.GatheredParameters(list(prompt.parameters())):
            return {k: v.detach().clone() for k, v in prompt.named_parameters()}

    deltas, before = [], values()
    for _ in range(steps):
        engine.backward(engine(**next(batches)).loss)
        engine.step()
        after = values()
        deltas.append({k: after[k] - before[k] for k in after})
        before = after
    return deltas


@pytest.mark.parametrize("zero", ["zero0", "zero2", "zero3_offload"])
def test_each_group_steps_at_its_own_rate_and_decay(zero, tiny_t5_dir, memorise_dir, tmp_path, monkeypatch):
    """AdamW by hand, no warm-up over 10 steps (the linear schedule's factor (10 - t)/10 at step t + 1):
    step 1 moves the prompt by lr·g/(|g| + ε) and B by lr_AB·g/(|g| + ε), about each group's rate where |g| ≫ ε;
    A, whose gradient is zero while B is, moves by its decay alone (-lr_AB · wd_AB · A); step 2 moves A by
    0.9 · lr_AB · (√(1 + β₂)/(1 + β₁) · g/|g| + wd_AB · A), its first gradient seen at t = 2."""
    from lrpt.trainer.config.ds_config import shipped

    # ZeRO-3 replaces torch's linear for the rest of the process (backbone.zero3_linear): put it back afterwards
    monkeypatch.setattr(F, "linear", F.linear)
    lr, lr_ab, wd_ab = 0.1, 0.01, 0.5
    cfg = RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(tmp_path / "run"),
                    method="dept", prompt_length=4, rank=2, learning_rate=lr, offset_learning_rate=lr_ab,
                    weight_decay=0.0, offset_weight_decay=wd_ab, warmup_ratio=0.0, max_steps=10,
                    max_grad_norm=1e6, per_device_train_batch_size=2, progress=False, deepspeed=shipped(zero))
    session = setup(cfg)
    groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in session.optimizer.param_groups}
    assert groups == {"prompt": (lr, 0.0), "offset": (lr_ab, wd_ab)}
    import deepspeed

    with deepspeed.zero.GatheredParameters([session.prompt.a]):
        a0 = session.prompt.a.detach().clone()
    first, second = step_deltas(session, 2)
    moved = first["prompt"][first["prompt"].abs() > 1e-3 * lr]
    assert moved.numel() > 0.5 * first["prompt"].numel()
    torch.testing.assert_close(moved.abs(), torch.full_like(moved, lr), rtol=2e-2, atol=0)
    b = first["b"][first["b"].abs() > 1e-3 * lr_ab]
    assert b.numel() > 0.5 * first["b"].numel()
    torch.testing.assert_close(b.abs(), torch.full_like(b, lr_ab), rtol=2e-2, atol=0)
    torch.testing.assert_close(first["a"], -lr_ab * wd_ab * a0, rtol=1e-4, atol=1e-9)
    a1 = a0 + first["a"]
    adam = math.sqrt(1 + 0.999) / (1 + 0.9)
    decay = -0.9 * lr_ab * wd_ab * a1
    step = second["a"] - decay  # the Adam part: ±0.9 · lr_AB · adam where A's gradient is not tiny (the rows of A
    big = step.abs() > 0.1 * 0.9 * lr_ab * adam  # that a token reached: the inputs are far shorter than s)
    assert big.sum() >= 10
    torch.testing.assert_close(step[big].abs(), torch.full_like(step[big], 0.9 * lr_ab * adam), rtol=2e-2, atol=0)


def test_the_report_shows_each_group(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    report = train(RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(tmp_path),
                             method="dept", prompt_length=4, rank=2, learning_rate=0.3, offset_learning_rate=0.003,
                             max_steps=2, per_device_train_batch_size=4, progress=False)).report
    groups = [(g.name, g.params, g.learning_rate, g.weight_decay) for g in report.optimizer_groups]
    source = RunConfig().max_source_length  # T5: the offsets cover the encoder input
    assert groups == [("prompt", 4 * 64, 0.3, 1e-5), ("offset", source * 2 + 2 * 64, 0.003, 1e-5)]
    assert "group offset" in capsys.readouterr().out


def fused_pair(root, model_dir: str, memorise_dir) -> list[RunConfig]:
    base = dict(model=model_dir, task="rte", data_dir=str(memorise_dir), method="dept", rank=2,
                per_device_train_batch_size=2, max_steps=4, warmup_ratio=0.25, decoding="rank", progress=False)
    return [RunConfig(**base, output_dir=str(root / "a"), prompt_length=4, offset_learning_rate=0.05),
            RunConfig(**base, output_dir=str(root / "b"), prompt_length=6, offset_learning_rate=0.01, seed=3)]


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_dept_runs_fused_equal_the_runs_alone(arch, backbone_dirs, memorise_dir, tmp_path):
    """T5: the standard fused rows; LLaMA: the shared prefix's packed segments; prompts of two lengths and two
    rates for A·B in one group."""
    for cfg in fused_pair(tmp_path / "alone", backbone_dirs[arch], memorise_dir):
        train(cfg)
    train_group(fused_pair(tmp_path / "fused", backbone_dirs[arch], memorise_dir))
    assert_same_run(tmp_path / "fused" / "a", tmp_path / "alone" / "a", ["b"])
    assert_same_run(tmp_path / "fused" / "b", tmp_path / "alone" / "b", ["a"])


@pytest.mark.parametrize("method", ["dept", "ulpt"])
def test_a_run_reopened_and_predicted_is_the_run_trained(method, tiny_t5_dir, memorise_dir, tmp_path, capsys):
    """`lrpt predict` (load_run) scores as the trained model did; `lrpt export --to peft` refuses DePT, whose
    update of the input tokens peft cannot hold, and exports ULPT's P."""
    import json

    run = tmp_path / "run"
    trained = train(RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(run),
                              method=method, prompt_length=4, max_steps=3, per_device_train_batch_size=4,
                              progress=False)).model.eval()
    _, _, reopened = load_run(run)
    batch = rows("t5")
    with torch.no_grad():
        torch.testing.assert_close(reopened.label_log_likelihood(**batch), trained.label_log_likelihood(**batch),
                                   rtol=0, atol=0)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"premise": f"A premise {i}.", "hypothesis": f"Then {i}.", "idx": i}) + "\n"
                              for i in range(3)))
    assert main(["predict", str(run), "--input", str(source), "--output", str(tmp_path / "out.jsonl")]) == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()
    code = main(["export", str(run), "--to", "peft", str(tmp_path / "adapter")])
    if method == "dept":
        assert code == 2 and "peft's prompt tuning only prepends a prompt" in capsys.readouterr().err
        assert not (tmp_path / "adapter").exists()
    else:
        assert code == 0 and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
