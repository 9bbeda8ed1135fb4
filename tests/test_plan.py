"""`lrpt plan`: preset sizes, a hand-computed case, the activation formulas against autograd's saved
tensors, and the predicted peak against the peak measured in a real run (CPU allocator)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from lrpt.trainer.cli.main import main
from lrpt.trainer.measure.plan import ARCHITECTURES, PlanSpec, _norm, activations, meta_model, plan


def t5_params(d: int, ff: int, inner: int, heads: int, layers: int, vocab: int = 32128) -> int:
    encoder_layer = 4 * d * inner + 2 * d * ff + 2 * d          # q k v o, wi wo, 2 norms
    decoder_layer = 8 * d * inner + 2 * d * ff + 3 * d          # + cross-attention, 3 norms
    # tied head, bias tables, final norms
    return vocab * d + layers * (encoder_layer + decoder_layer) + 2 * 32 * heads + 2 * d


def llama_params(d: int, ff: int, layers: int, heads: int, kv_heads: int, vocab: int = 32000) -> int:
    kv = d // heads * kv_heads
    return layers * (2 * d * d + 2 * d * kv + 3 * d * ff + 2 * d) + 2 * vocab * d + d


@pytest.mark.parametrize("name, expected", [
    ("t5-small", t5_params(512, 2048, 512, 8, 6)),          # 60.5M
    ("t5-base", t5_params(768, 3072, 768, 12, 12)),         # 223M
    ("t5-large", t5_params(1024, 4096, 1024, 16, 24)),      # 738M
    ("t5-3b", t5_params(1024, 16384, 4096, 32, 24)),        # 2.85B
    ("t5-11b", t5_params(1024, 65536, 16384, 128, 24)),     # 11.3B
    ("llama-7b", llama_params(4096, 11008, 32, 32, 32)),    # 6.74B
    ("llama-13b", llama_params(5120, 13824, 40, 40, 40)),   # 13.0B
    ("llama-70b", llama_params(8192, 28672, 80, 64, 8)),    # 69.0B
])
def test_presets_have_the_published_sizes(name, expected):
    model = meta_model(ARCHITECTURES[name])
    assert sum(p.numel() for p in model.parameters()) == expected
    assert plan(PlanSpec(model=name, zero=0, gpus=1, batch=1, seq_len=8)).backbone_params == expected


def test_hand_computed_llama_7b_zero3():
    """LLaMA-7B, bf16, ZeRO-3 on 2 nodes x 4 GPUs, vanilla prompt tuning c=100, micro batch 2 x 412."""
    p = plan(PlanSpec(model="llama-7b", zero=3, gpus=4, nodes=2, method="pt", prompt_length=100, batch=2,
                      seq_len=412, precision="bf16", gpu_memory_gib=80))
    world, d, ff, v, layers, t = 8, 4096, 11008, 32000, 32, 512
    # weights: norms (4096 elements <= persistence threshold 10 * 4096) stay whole, the rest is 1/8 per rank
    norms = (2 * layers + 1) * d
    sharded = 6_738_415_616 - norms
    assert p.per_rank["weights"] == 2 * norms + math.ceil(2 * sharded / world)
    # prompt 100 x 4096: bf16 parameter + bf16 gradient + fp32 master + 2 fp32 moments
    assert p.trainable_params == 409_600 and p.per_rank["prompt_and_optimizer"] == 409_600 * (2 + 2 + 4 + 8)
    # reduce bucket: hidden^2 elements of the (bf16) gradient
    assert p.per_rank["deepspeed_reduce_bucket"] == d * d * 2
    # activations per token per layer: 2 RMSNorms (fp32 input copy + rsqrt); q, k, v (repeated to all
    # 32 heads) and attention output in bf16; fp32 log-sum-exp per head; the layer's padding mask
    # (t x t, bf16); SwiGLU's gate, up and silu(gate) in bf16
    per_token_layer = 2 * (4 * d + 4) + 2 * 4 * d + 4 * 32 + 2 * t + 3 * 2 * ff
    stack = 4 * d + 4 + 2 * 2 * 128                     # final norm; rotary cos and sin
    assert p.per_rank["activations_saved"] == 2 * t * (layers * per_token_layer + stack)
    # head: the fp32 log-softmax output, its gradient and its input's gradient (12 bytes per logit)
    # outweigh the forward's end (bf16 logits + fp32 copy + log-softmax output: 10 bytes)
    assert p.per_rank["backward_transient"] == 2 * t * v * 12
    # ZeRO-3 keeps the last 5e8 elements gathered (reuse distance 1e9), plus one block and a prefetch bucket
    assert 5e8 * 2 < p.per_rank["zero3_gathered"] < (5e8 + 3 * 202_383_360 + 0.9 * d * d) * 2
    assert p.train_peak == sum(p.per_rank.values()) and p.fits


def test_hpz_plans_the_whole_load_the_loader_does(tmp_path):
    """ZeRO++ hpZ keeps node-wide partitions cut from whole tensors, so the loader loads a quantized backbone whole
    there (quant_load.sharded says no): the plan's load peak under hpZ equals its --quantized_load whole peak, and
    is larger than the sharded load the same config without hpZ plans."""
    from lrpt.trainer.backbone import quant_load
    from lrpt.trainer.config.ds_config import DeepSpeedConfig, shipped
    from lrpt.trainer.config.run_config import RunConfig

    hpz = json.loads(open(shipped("zero3")).read())
    hpz["zero_optimization"]["zero_hpz_partition_size"] = 4
    (tmp_path / "hpz.json").write_text(json.dumps(hpz))
    spec = dict(model="llama-7b", zero=3, gpus=4, nodes=2, method="pt", prompt_length=100, batch=2, seq_len=412,
                precision="bf16", quant="4bit", gpu_memory_gib=80)
    under_hpz = plan(PlanSpec(**spec, ds_config=str(tmp_path / "hpz.json")))
    whole = plan(PlanSpec(**spec, quantized_load="whole"))
    sharded = plan(PlanSpec(**spec))
    assert under_hpz.load_peak == whole.load_peak > 3 * sharded.load_peak  # an eighth each, + one tensor converting
    run = RunConfig(load_in_4bit=True, deepspeed=str(tmp_path / "hpz.json"))
    zero3 = DeepSpeedConfig(json.loads(open(shipped("zero3")).read()))
    assert not quant_load.sharded(run, DeepSpeedConfig(hpz)) and quant_load.sharded(run, zero3)


def saved_bytes(model, **inputs) -> int:
    """Bytes autograd saves for backward outside the parameters, each storage once (as the planner
    counts them), less the loss's log-softmax output, which the planner counts in the head transient."""
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    seen: dict[int, torch.Tensor] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    vocab = model.config.vocab_size
    return sum(t.untyped_storage().nbytes() for t in seen.values() if t.dim() != 2 or t.shape[-1] != vocab)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_activation_formulas_match_autograd(family, precision):
    """The per-layer arithmetic against what torch saves for a frozen model on a padded batch (LLaMA
    with grouped-query attention). Dropout is off: on CPU torch saves a float noise tensor per
    dropout and falls back to the math attention kernel, where CUDA saves a bool mask and keeps
    the fused kernel; the planner counts the CUDA way (`_t5_layer`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, LlamaConfig, T5Config

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    batch, tokens, target = 2, 40, 6
    if family == "llama":
        config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        labels = torch.randint(0, 64, (batch, tokens))
    else:
        config = T5Config(vocab_size=64, d_model=64, d_ff=96, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
                          dropout_rate=0.0, pad_token_id=0, decoder_start_token_id=0)
        model = AutoModelForSeq2SeqLM.from_config(config, dtype=dtype)
        labels = torch.randint(0, 64, (batch, target))
    model.requires_grad_(False).train()
    embeds = torch.randn(batch, tokens, 64, dtype=dtype, requires_grad=True)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[1, -5:] = 0
    got = saved_bytes(model, inputs_embeds=embeds, attention_mask=mask, labels=labels)
    spec = PlanSpec(batch=batch, seq_len=tokens, target_len=target, precision=precision, prompt_length=1)
    assert got == pytest.approx(activations(config, spec, prompt_tokens=0)["saved"], rel=0.05)
    assert _norm(10, 8, 4, True) == _norm(10, 8, 4, False) == 4 * 10 * 8 + 40


def test_plan_cli_json_and_exit_status(capsys):
    assert main(["plan", "--model", "t5-small", "--zero", "0", "--gpus", "1", "--batch", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and out["needed"] == out["peak"] + 2**30
    assert main(["plan", "--model", "llama-70b", "--zero", "0", "--gpus", "8", "--precision", "bf16"]) == 1
    assert "does NOT fit" in capsys.readouterr().out
    assert main(["plan", "--model", "llama-70b", "--zero", "3", "--gpus", "8", "--batch", "1"]) in (0, 1)
    assert main(["plan", "--model", "t5-small", "--prompt_length", "0"]) == 2


@pytest.mark.parametrize("backbone, options", [
    ("tiny_t5_dir", {}),
    ("tiny_llama_dir", {"grad_ckpt": True}),
    ("tiny_llama_dir", {"quant": "8bit"}),
])
def test_predicted_peak_within_20_percent_of_measured(backbone, options, request, tmp_path):
    """One process, ZeRO-0: the planner's training peak against the CPU allocator's measured peak,
    plain, with gradient checkpointing, and with bitsandbytes' 8-bit layers."""
    from lrpt.trainer.bench.planner import worker

    model = request.getfixturevalue(backbone)
    flags = ["--model", model, "--output_dir", str(tmp_path / "run"), "--method", "dpt", "--prompt_length", "20",
             "--per_device_train_batch_size", "8", "--progress", "false",
             "--shared_prefix", "false"]  # the planner plans the standard path
    flags += ["--gradient_checkpointing", "true"] if options.get("grad_ckpt") else []
    flags += ["--load_in_8bit", "true"] if options.get("quant") == "8bit" else []
    worker(tmp_path, flags, batch=8, seq_len=96, target_len=16, steps=3)
    measured = json.loads((tmp_path / "rank0.json").read_text())
    predicted = plan(PlanSpec(model=model, zero=0, gpus=1, method="dpt", prompt_length=20, batch=8,
                              seq_len=96, target_len=16, precision="fp32", **options))
    assert predicted.train_peak == pytest.approx(measured["measured_peak"], rel=0.2)
    if not options:  # a quantized load also reads the fp32 checkpoint through the same CPU allocator
        assert predicted.load_peak == pytest.approx(measured["measured_load_peak"], rel=0.2)


def test_fused_group_planned_within_20_percent_of_measured(tiny_t5_dir, tmp_path):
    """Three runs fused (trainer/train/fused.py), one process: `lrpt plan --fuse 3` (the micro-batches summed in one
    forward, a prompt, optimizer and engine per run) against the CPU allocator's measured peak. The plan of
    one such run is far below it: the fused accounting is what brings the plan within 20 %."""
    from lrpt.trainer.bench.planner import worker

    flags = ["--model", tiny_t5_dir, "--output_dir", str(tmp_path / "run"), "--method", "dpt", "--prompt_length",
             "20", "--per_device_train_batch_size", "8", "--progress", "false"]
    worker(tmp_path, flags, batch=8, seq_len=96, target_len=16, steps=3, fused=3)
    measured = json.loads((tmp_path / "rank0.json").read_text())["measured_peak"]
    shape = dict(model=tiny_t5_dir, zero=0, gpus=1, method="dpt", prompt_length=20, batch=8, seq_len=96,
                 target_len=16, precision="fp32")
    assert plan(PlanSpec(**shape, fused=3)).train_peak == pytest.approx(measured, rel=0.2)
    assert plan(PlanSpec(**shape)).train_peak < 0.8 * measured


def test_predicted_zero3_peak_within_20_percent_on_two_ranks(tiny_llama_dir, tmp_path):
    """ZeRO-3 through the real launcher, 2 CPU ranks: shards, gathered working set, reduce bucket."""
    import argparse

    from lrpt.trainer.bench.planner import ds_config_file, measure

    args = argparse.Namespace(batch=4, seq_len=64, target_len=8, steps=2, method="dpt", prompt_length=10)
    ds_config = ds_config_file(3, [], tmp_path)
    predicted = plan(PlanSpec(model=tiny_llama_dir, zero=3, gpus=2, method="dpt", prompt_length=10, batch=4,
                              seq_len=64, precision="fp32", ds_config=ds_config))
    ranks = measure(tiny_llama_dir, 2, ds_config, args, tmp_path)
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert predicted.train_peak == pytest.approx(r["measured_peak"], rel=0.2)


def test_a_run_reaches_its_plan_through_the_settings_whose_policy_says_so():
    """Each RunConfig field, changed alone: PlanSpec.from_run changes exactly when the field's Policy says the plan
    reads it (copied to a PlanSpec field, or DERIVED), so a setting that changes memory cannot be planned by
    accident or forgotten without its policy saying so."""
    import dataclasses

    from lrpt import methods
    from lrpt.trainer.config.run_config import DERIVED, RunConfig, policies

    base = RunConfig(model="llama-7b")
    special = {"model": "llama-13b", "method": "dpt", "precision": "bf16", "quantized_load": "whole",
               "deepspeed": "ds_configs/zero3.json", "data_dir": "elsewhere", "task": "rte", "shared_prefix": "false",
               "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bf16", "bnb_4bit_quant_storage": "fp32",
               "resume_from_checkpoint": "none", "decoding": "generate", "selection": "final", "report_to": "none",
               "init": "random", "activation": "relu"}
    owner = {name: method for method in methods.available() for name in methods.option_names(method)}
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    read, ignored = [], []
    for name, policy in policies().items():
        start = base if name not in owner else dataclasses.replace(
            base, method=owner[name], **({"init": "text", "init_text": "some words"} if name == "init_text" else {}))
        value = getattr(start, name)
        changed = special.get(name, not value if isinstance(value, bool) else value + 1 if isinstance(value, int)
                              else value * 2 + 0.5 if isinstance(value, float) else f"{value}x" if value else None)
        if changed is None:  # unset by default: a value of the field's type
            changed = 3 if "int" in str(fields[name].type) else 0.5 if "float" in str(fields[name].type) else "x"
        differs = PlanSpec.from_run(dataclasses.replace(start, **{name: changed})) != PlanSpec.from_run(start)
        (read if differs else ignored).append(name)
        assert differs == bool(policy.plan), (name, changed, policy.plan)
    assert {"model", "per_device_train_batch_size", "load_in_4bit", "deepspeed", "rank"} <= set(read)
    assert {"seed", "learning_rate", "task", "output_dir"} <= set(ignored)
    assert all(policies()[n].plan == DERIVED for n in owner)
