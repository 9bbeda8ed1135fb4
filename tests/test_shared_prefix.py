"""--shared_prefix: the prompt computed once per batch equals the standard path, in training and
evaluation, on every ZeRO stage, quantized or not, with gradient checkpointing, fp32 and bf16."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config

from lrpt import methods
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.errors import LrptError
from lrpt.trainer.train.loop import check_run, train
from lrpt.trainer.model.prompted import PromptedModel

from launch import ROOT, launch

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
    init = "random" if method in ("pt", "lamp", "residual") else None
    prompt = methods.build(method, 6, backbone.embed_dim, init=init,
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
        cfg = RunConfig(model=tiny_llama_dir, task="rte", data_dir=str(memorise_dir),
                        output_dir=str(tmp_path / str(shared)),
                        method="dpt", prompt_length=8, max_steps=8, per_device_train_batch_size=4,
                        progress=False, shared_prefix=shared)
        report = train(cfg).report
        curves.append(report.train.loss_curve)
        paths.append(report.shared_prefix)
    assert paths == [False, True]
    # the first steps agree to fp32 noise; Adam at lr 0.3 then amplifies that noise a little
    torch.testing.assert_close(curves[1][:3], curves[0][:3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(curves[1], curves[0], rtol=1e-2, atol=1e-3)
    assert curves[1][-1] < curves[1][0]




def tiny_decoder(model_type: str, checkpointing: bool):
    """The tiny LLaMA, or a Mistral / Qwen2 of the same shape (the other decoder-only types the path is
    checked on), frozen, as load_backbone leaves it."""
    if model_type == "llama":
        return load_backbone("tiny-llama", gradient_checkpointing=checkpointing).model
    config = {"mistral": MistralConfig, "qwen2": Qwen2Config}[model_type](
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.3, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


@pytest.mark.parametrize("model_type, attention, checkpointing", [
    ("llama", "eager", False), ("llama", "sdpa", True), ("mistral", "sdpa", False), ("qwen2", "eager", True)])
def test_each_backbone_type_and_kernel_equals_the_standard_path(model_type, attention, checkpointing):
    """Reference: the same model's standard path (the prompt in every row), right and left padding."""
    for left in (False, True):
        results = []
        for shared in (False, True):
            backbone = tiny_decoder(model_type, checkpointing)
            backbone.set_attn_implementation(attention)
            prompt = methods.build("dpt", 6, backbone.config.hidden_size, generator=torch.Generator().manual_seed(1))
            model = PromptedModel(backbone, prompt, False, shared_prefix=shared).train()
            assert backbone.config._attn_implementation.endswith(attention)
            loss = model(**batch(left)).loss
            loss.backward()
            results.append((loss.detach(), [p.grad for p in prompt.parameters()]))
        (loss_a, grads_a), (loss_b, grads_b) = results
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_a, grads_b):
            assert a.abs().sum() > 0
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


def run_batches() -> list[dict[str, torch.Tensor]]:
    """Three runs' micro-batches: 3 rows of width 9 right-padded, 2 of width 6 left-padded, 1 of width 9."""
    right, left = batch(False), batch(True)
    return [right, {k: v[1:, 3:] for k, v in left.items()}, {k: v[:1] for k, v in right.items()}]


@pytest.mark.parametrize("model_type, attention, checkpointing", [
    ("llama", "sdpa", False), ("qwen2", "eager", True)])
def test_packed_segments_equal_each_run_alone(model_type, attention, checkpointing):
    """A fused group's packed sequence (train.fused.packed_losses: three runs' prompts of lengths 6, 4 and 3 (LAMP
    pooling 6 to 3), each followed by its own rows at its own width) against each run computed alone on the standard
    path (the prompt in every row, PromptedModel): every run's loss and its prompt's gradient."""
    from lrpt.trainer.train.fused import packed_losses

    backbone = tiny_decoder(model_type, checkpointing)
    backbone.set_attn_implementation(attention)
    width, g = backbone.config.hidden_size, torch.Generator().manual_seed(1)
    prompts = [methods.build("dpt", 6, width, generator=g), methods.build("pt", 4, width, init="random", generator=g),
               methods.build("lamp", 6, width, init="random", rank=4, pool=2, generator=g)]
    batches = run_batches()
    alone = []
    for prompt, rows in zip(prompts, batches):
        loss = PromptedModel(backbone, prompt, False).train()(**rows).loss
        alone.append((loss.detach(), torch.autograd.grad(loss, list(prompt.parameters()))))
    PromptedModel(backbone, prompts[0], False, shared_prefix=True)  # routes the backbone's attention
    losses = packed_losses(backbone.train(), [(prompt(), None, rows) for prompt, rows in zip(prompts, batches)])
    for k, (prompt, (loss_a, grads_a)) in enumerate(zip(prompts, alone)):
        torch.testing.assert_close(losses[k].detach(), loss_a, rtol=1e-5, atol=1e-6)
        grads = torch.autograd.grad(losses[k], list(prompt.parameters()), retain_graph=True)
        for a, b in zip(grads_a, grads):
            assert a.abs().sum() > 0
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


def prompted_pair(model_dir: str) -> tuple[PromptedModel, PromptedModel, object]:
    """The same backbone weights and prompt, standard and shared (two loads: the shared one's attention
    is re-routed), and the tokenizer."""
    models = []
    for shared in (False, True):
        backbone = load_backbone(model_dir)
        prompt = methods.build("pt", 5, backbone.embed_dim, init="random", generator=torch.Generator().manual_seed(3))
        models.append(PromptedModel(backbone.model, prompt, False, shared_prefix=shared).eval())
    return models[0], models[1], backbone.tokenizer


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_rank_classification_scores_equal_the_standard_path(left, tiny_llama_dir):
    """Reference: label_log_likelihood on the standard path, mixed lengths (the scores rank classification
    compares), and rank_classify's choices on real encoded candidates."""
    standard, shared, tokenizer = prompted_pair(tiny_llama_dir)
    with torch.no_grad():
        a, b = (m.label_log_likelihood(**batch(left)) for m in (standard, shared))
    assert (a < 0).all()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_rank_classify_chooses_as_the_standard_path(tiny_llama_dir):
    import datasets

    from lrpt.trainer.train.data import Encoder
    from lrpt.trainer.train.evaluate import rank_classify

    standard, shared, tokenizer = prompted_pair(tiny_llama_dir)
    rows = datasets.Dataset.from_list([
        {"source": f"copa choice1: rain {i} choice2: sun premise: wet {'x' * i} question: cause",
         "candidates": ["choice1", "choice2"]} for i in range(6)] + [
        {"source": "record query: @placeholder won entities: Ann, Bob Smith, C",
         "candidates": ["Ann", "Bob Smith", "C"]}])
    encoder = Encoder(tokenizer, False, 64, 8)
    chosen = [rank_classify(m, rows, encoder, batch_size=4, progress=False) for m in (standard, shared)]
    assert chosen[0] == chosen[1] and len(chosen[0]) == len(rows)


def test_greedy_generation_equals_the_standard_path(tiny_llama_dir):
    """Reference: generation on the standard path, a left-padded batch of mixed lengths (the prompt pre-filled
    once and broadcast on the shared path). At least 6 new tokens, so an immediate end cannot hide a difference."""
    standard, shared, tokenizer = prompted_pair(tiny_llama_dir)
    inputs = batch(left=True)
    outputs = [m.generate(inputs["input_ids"], inputs["attention_mask"], max_new_tokens=8, min_new_tokens=6,
                          pad_token_id=0, eos_token_id=1) for m in (standard, shared)]
    assert outputs[0].shape[1] >= 6
    assert torch.equal(outputs[1], outputs[0])


@pytest.mark.parametrize("flags, message", [
    ({"model": "tiny-t5"}, "encoder-decoder"),
])
def test_shared_prefix_refusals(flags, message):
    cfg = RunConfig(**{"model": "tiny-llama", "shared_prefix": True, **flags})
    with pytest.raises(LrptError, match=message):
        check_run(cfg)


def test_an_unchecked_backbone_type_is_refused_by_true_and_skipped_by_auto(tmp_path):
    """A GPT-2 directory holding only config.json: `true` is refused before any weight could load."""
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(LrptError, match="gpt2 is not among the backbones"):
        check_run(RunConfig(model=str(tmp_path), shared_prefix=True))
    from lrpt.trainer.backbone.source import resolve_config
    from lrpt.trainer.model.shared_prefix import decide

    assert decide(RunConfig(model=str(tmp_path)).shared_prefix, resolve_config(str(tmp_path))) is False


def test_a_kernel_without_block_masks_is_refused_by_true_and_skipped_by_auto(tiny_llama_dir):
    from lrpt.trainer.train.loop import use_shared_prefix

    for value, expected in (("auto", False), ("true", LrptError)):
        backbone = load_backbone(tiny_llama_dir)
        backbone.model.config._attn_implementation = "flex_attention"
        cfg = RunConfig(model=tiny_llama_dir, shared_prefix=value)
        if expected is LrptError:
            with pytest.raises(LrptError, match="flex_attention.*sdpa or eager"):
                use_shared_prefix(cfg, backbone)
        else:
            assert use_shared_prefix(cfg, backbone) is False


@pytest.mark.parametrize("flags, expected", [
    ({}, True),
    ({"shared_prefix": "false"}, False),
    ({"model": "tiny-t5"}, False),
    ({"gradient_checkpointing": True}, True),
    ({"deepspeed": "ds_configs/zero3.json"}, True),
    ({"deepspeed": "ds_configs/zero3_offload.json", "load_in_4bit": True}, True),
    ({"load_in_8bit": True, "precision": "bf16"}, True),
    ({"deepspeed": "ds_configs/zero2.json"}, True),
])
def test_shared_prefix_auto_takes_it_where_proven(flags, expected):
    from lrpt.trainer.backbone.source import resolve_config
    from lrpt.trainer.model.shared_prefix import decide

    cfg = RunConfig(**{"model": "tiny-llama", **flags})
    assert cfg.shared_prefix == flags.get("shared_prefix", "auto")
    assert decide(cfg.shared_prefix, resolve_config(cfg.model)) is expected


@pytest.mark.parametrize("value, expected", [(True, "true"), (False, "false"), ("on", "true"), ("AUTO", "auto")])
def test_shared_prefix_spellings(value, expected):
    assert RunConfig(shared_prefix=value).shared_prefix == expected
    with pytest.raises(LrptError, match="auto, true or false"):
        RunConfig(shared_prefix="sometimes")


# ---------------------------------------------------------------- every cell, 2 ranks, one launch

STAGES = {"zero0": "ds_configs/zero0.json", "zero1": None, "zero2": "ds_configs/zero2.json",
          "zero3": "ds_configs/zero3.json", "zero3_offload": "ds_configs/zero3_offload.json"}
QUANTS = {"none": [], "8bit": ["--load_in_8bit"], "4bit": ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4"]}
CELLS = [(stage, q, checkpointing, precision) for stage in STAGES for q in QUANTS for checkpointing in (False, True)
         for precision in ("fp32", "bf16")]
# fp32: the same products summed in another order (measured: loss 1e-7, gradient 1e-6 relative). bf16 rounds
# every layer's output, and the packed layout changes which sums are rounded (measured: loss 3e-4, gradient
# norm of the difference 2e-2 of the gradient's): a bf16 gradient is compared by the norm of the difference.
TOLERANCE = {"fp32": {"loss": dict(rtol=1e-5, atol=1e-6), "grad": dict(rtol=1e-3, atol=1e-5),
                      "curve": dict(rtol=1e-4, atol=1e-5)},
             "bf16": {"loss": dict(rtol=1e-3, atol=1e-4), "grad_norm": 5e-2, "curve": dict(rtol=2e-3, atol=1e-3)}}


def cell_name(stage: str, q: str, checkpointing: bool, precision: str) -> str:
    return f"{stage}-{q}-{'gc' if checkpointing else 'nogc'}-{precision}"


@pytest.fixture(scope="module")
def cells(tiny_llama_dir, memorise_dir, tmp_path_factory):
    """Every cell in one 2-rank launch (tests/shared_prefix_probe.py)."""
    out = tmp_path_factory.mktemp("shared-prefix-cells")
    zero1 = out / "zero1.json"
    zero1.write_text(json.dumps({**json.loads((ROOT / "ds_configs/zero2.json").read_text()),
                                 "zero_optimization": {"stage": 1}}))
    spec = {}
    for stage, q, checkpointing, precision in CELLS:
        spec[cell_name(stage, q, checkpointing, precision)] = [
            "--deepspeed", STAGES[stage] or str(zero1), *QUANTS[q], "--precision", precision,
            *(["--gradient_checkpointing"] if checkpointing else [])]
    (out / "cells.json").write_text(json.dumps(spec))
    launch("tests/shared_prefix_probe.py", [str(out), str(out / "cells.json"), "--", "--model", tiny_llama_dir,
                                             "--task", "rte", "--data_dir", str(memorise_dir), "--method", "dpt",
                                             "--prompt_length", "8",
                                             "--per_device_train_batch_size", "2", "--seed", "5", "--max_steps", "4",
                                             "--progress", "false"], timeout=1200)
    return out


@pytest.mark.parametrize("stage, q, checkpointing, precision", CELLS, ids=[cell_name(*c) for c in CELLS])
def test_every_cell_trains_as_the_standard_path(stage, q, checkpointing, precision, cells):
    """Reference: the standard path on the same engine from the same step-0 checkpoint, the same micro-batches.
    First-step loss and the full (all-reduced) prompt gradient, then the curve of 4 steps; setup resolved
    --shared_prefix true to the shared path (what the report states)."""
    tol = TOLERANCE[precision]
    for r in (0, 1):
        result = json.loads((cells / cell_name(stage, q, checkpointing, precision) / f"rank{r}.json").read_text())
        assert result["resolved"] is True
        standard, shared = result["standard"], result["shared"]
        torch.testing.assert_close(shared["loss"], standard["loss"], **tol["loss"])
        for name, grad in standard["grads"].items():
            reference, got = torch.tensor(grad), torch.tensor(shared["grads"][name])
            assert reference.abs().sum() > 0
            if precision == "fp32":
                torch.testing.assert_close(got, reference, **tol["grad"])
            else:
                assert (got - reference).norm() <= tol["grad_norm"] * reference.norm(), name
        torch.testing.assert_close(shared["curve"], standard["curve"], **tol["curve"])


@pytest.mark.parametrize("stage", ["zero3", "zero3_offload"])
@pytest.mark.parametrize("q", list(QUANTS))
def test_zero3_gathers_no_more_per_step_on_the_shared_path(stage, q, cells):
    """Reference: DeepSpeed's comms logger on the standard path, same engine and batches. After the first
    (trace-recording) step, every step all-gathers exactly as many times and bytes on both paths."""
    for checkpointing in (False, True):
        result = json.loads((cells / cell_name(stage, q, checkpointing, "fp32") / "rank0.json").read_text())
        assert result["stage"] == 3
        standard, shared = result["standard"]["gathers"][1:], result["shared"]["gathers"][1:]
        assert all(step["count"] > 0 and step["bytes"] > 0 for step in standard)
        assert shared == standard
