"""End-to-end training of every method on tiny T5 and LLaMA backbones loaded from disk."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from lrpt import methods
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.train.loop import train

METHODS = ["pt", "dpt", "lopt1", "lopt2", "lamp", "residual"]


def run_config(model_dir: str, data_dir, out, **kw) -> RunConfig:
    base = dict(model=model_dir, task="rte", data_dir=str(data_dir), output_dir=str(out), prompt_length=8,
                learning_rate=0.3, per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=50,
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
    curve = report.train.loss_curve
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
    assert report.trainable_params == sum(p.numel() for p in model.prompt.parameters())
    # AdamW keeps m and v (fp32) per prompt value, and a 4-byte step counter per prompt tensor
    n_tensors = len(list(model.prompt.parameters()))
    assert report.optimizer_state_bytes == 2 * 4 * report.trainable_params + 4 * n_tensors

    # save -> load into a differently seeded module gives the same prompt and the same outputs
    fresh = methods.build(method, 8, model.prompt.embed_dim, generator=torch.Generator().manual_seed(123),
                          **({"init": "random"} if method in ("pt", "lamp", "residual") else {}))
    assert not torch.equal(fresh.dense(), model.prompt.dense())
    fresh.load_state_dict(load_file(tmp_path / "run" / "prompt.safetensors"))
    torch.testing.assert_close(fresh.dense(), model.prompt.dense(), rtol=0, atol=0)
    dense = load_file(tmp_path / "run" / "prompt_dense.safetensors")["prompt"]
    torch.testing.assert_close(dense, model.prompt.dense(), rtol=0, atol=0)


def test_only_prompt_receives_gradients(tiny_t5_dir):
    from lrpt.trainer.backbone.load import load_backbone
    from lrpt.trainer.model.prompted import PromptedModel

    backbone = load_backbone(tiny_t5_dir)
    model = PromptedModel(backbone.model, methods.build("dpt", 6, backbone.embed_dim), True)
    ids = torch.randint(3, 200, (2, 9))
    loss = model(ids, torch.ones_like(ids), labels=torch.randint(3, 200, (2, 4))).loss
    loss.backward()
    assert all(p.grad is None for p in backbone.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt.parameters())


def test_bf16_backbone_with_fp32_optimizer_state(tiny_t5_dir, memorise_dir, tmp_path):
    from lrpt.trainer.measure.meter import optimizer_state_tensors

    result = train(run_config(tiny_t5_dir, memorise_dir, tmp_path / "run", method="dpt", precision="bf16",
                              max_steps=20))
    curve = result.report.train.loss_curve
    assert sum(curve[-3:]) / 3 < 0.95 * curve[0], curve
    backbone = result.model.backbone
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}
    on_disk = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir, dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(t, backbone.state_dict()[n]) for n, t in on_disk.items())
    state = optimizer_state_tensors(result.engine.optimizer)
    assert state and {t.dtype for t in state} <= {torch.float32}  # master weights and moments stay fp32


def entailment_rows(n: int) -> list[dict]:
    """RTE rows whose targets all have the same token count: a batch's mean loss is then the mean of its
    micro-batches' means, whatever the split."""
    return [{"premise": f"Row {i} says {'a' * (i % 5)} thing.", "hypothesis": f"Row {i}.", "label": "entailment",
             "idx": i} for i in range(n)]


def test_gradient_accumulation_equals_the_whole_batch(tiny_t5_dir, tmp_path):
    """2 micro-batches of 2 accumulated = one batch of 4 (the same rows: the order depends on the seed alone):
    the same loss curve and the same trained prompt (fp32 summation order: 1e-5)."""
    from conftest import write_task

    data = write_task(tmp_path / "data", "RTE", {"train": entailment_rows(8), "val": entailment_rows(2)})
    whole = train(run_config(tiny_t5_dir, data, tmp_path / "whole", method="dpt", max_steps=4, decoding="rank"))
    accumulated = train(run_config(tiny_t5_dir, data, tmp_path / "accum", method="dpt", max_steps=4, decoding="rank",
                                   per_device_train_batch_size=2, gradient_accumulation_steps=2))
    assert accumulated.report.deepspeed_config["gradient_accumulation_steps"] == 2
    torch.testing.assert_close(accumulated.report.train.loss_curve, whole.report.train.loss_curve,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(load_file(tmp_path / "accum" / "prompt.safetensors"),
                               load_file(tmp_path / "whole" / "prompt.safetensors"), rtol=1e-5, atol=1e-6)
    assert whole.report.train.loss_curve[0] != whole.report.train.loss_curve[1]  # it trains


def test_few_shot_trains_on_the_drawn_rows_only(tiny_t5_dir, tmp_path):
    """--few_shot K against a separately trained run on a file holding exactly the K rows of the documented
    draw (random.Random(crc32("rte-K-seed")).sample over the rows): the same loss curve and prompt."""
    import json
    import random
    import zlib

    from conftest import write_task
    from lrpt.eval.data import DEMO_DIR

    rows = [json.loads(line) for line in (DEMO_DIR / "RTE" / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (DEMO_DIR / "RTE" / "val.jsonl").read_text().splitlines()]
    drawn = sorted(random.Random(zlib.crc32(b"rte-4-3")).sample(range(len(rows)), 4))
    data = write_task(tmp_path / "drawn", "RTE", {"train": [rows[i] for i in drawn], "val": val})
    settings = dict(method="pt", max_steps=3, per_device_train_batch_size=2, decoding="rank", max_eval_samples=4,
                    seed=3)
    few = train(run_config(tiny_t5_dir, DEMO_DIR, tmp_path / "few", few_shot=4, **settings)).report
    reference = train(run_config(tiny_t5_dir, data, tmp_path / "ref", **settings)).report
    assert few.data.train_examples == 4
    assert few.train.loss_curve == reference.train.loss_curve
    torch.testing.assert_close(load_file(tmp_path / "few" / "prompt.safetensors"),
                               load_file(tmp_path / "ref" / "prompt.safetensors"), rtol=0, atol=0)


def test_a_runs_config_yaml_repeats_it(tiny_t5_dir, memorise_dir, tmp_path):
    """`lrpt train --config runs/x/config.yaml --output_dir elsewhere` trains the same run again: the same curve
    and prompt, bit for bit (a setting config.yaml failed to record would change them)."""
    from lrpt.trainer.cli.main import main

    flags = ["--model", tiny_t5_dir, "--task", "rte", "--data_dir", str(memorise_dir), "--method", "lamp", "--rank",
             "3", "--pool",
             "2", "--prompt_length", "6", "--learning_rate", "0.05", "--weight_decay", "0.01", "--seed", "11",
             "--max_steps", "3", "--per_device_train_batch_size", "2", "--warmup_ratio", "0.3", "--decoding", "rank",
             "--progress", "false"]
    assert main(["train", *flags, "--output_dir", str(tmp_path / "a")]) == 0
    assert main(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--output_dir", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert a["train"]["loss_curve"] == b["train"]["loss_curve"] and a["metrics"] == b["metrics"]
    torch.testing.assert_close(load_file(tmp_path / "b" / "prompt.safetensors"),
                               load_file(tmp_path / "a" / "prompt.safetensors"), rtol=0, atol=0)


def test_init_text_starts_from_the_texts_embeddings(tiny_t5_dir, memorise_dir, tmp_path):
    """--init text through `lrpt train`: the prompt starts as the backbone's own embedding rows of the text's
    tokens, cycled to c (read with transformers, not lrpt); a learning rate of 1e-9 leaves it there."""
    from transformers import AutoTokenizer

    text = "Is it true?"
    train(run_config(tiny_t5_dir, memorise_dir, tmp_path / "run", method="pt", init="text", init_text=text,
                     prompt_length=16, max_steps=1, learning_rate=1e-9, weight_decay=0.0, decoding="rank"))
    ids = AutoTokenizer.from_pretrained(tiny_t5_dir)(text, add_special_tokens=False)["input_ids"]
    rows = [ids[i % len(ids)] for i in range(16)]
    embedding = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).get_input_embeddings().weight.detach()
    prompt = load_file(tmp_path / "run" / "prompt_dense.safetensors")["prompt"]
    torch.testing.assert_close(prompt, embedding[rows], rtol=0, atol=1e-6)
