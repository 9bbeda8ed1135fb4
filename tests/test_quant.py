"""Quantized frozen backbones (bitsandbytes 8-bit / 4-bit) x ZeRO stages: the support matrix of
docs/quantization.md, cell by cell. One process for stage 0; 2 CPU ranks through the real deepspeed
launcher for ZeRO-2, ZeRO-3 and ZeRO-3 with parameter offload (one launch per (arch, quant),
several sessions per launch); every refused cell raises before a weight is loaded."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from launch import ROOT, clean_env, launch
from lrpt.trainer.backbone import quant
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.errors import LrptError
from lrpt.trainer.train.loop import build_prompt, check_run, setup, train
from lrpt.trainer.tensor_bytes import held_bytes
from lrpt.trainer.backbone.presets import preset_config
from lrpt.trainer.measure.flops import matmul_params
from lrpt.trainer.model.prompted import PromptedModel

# Tolerances against the one-process unsharded quantized reference (fp32; gloo averages the
# two ranks' prompt gradients, so the last bits of the gradient may differ).
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
SHARDED_LIMIT = 0.55  # held quantized bytes per rank / an unsharded rank's

QUANT_FLAGS = {"8bit": ["--load_in_8bit"], "4bit": ["--load_in_4bit"]}
NF4_DQ = ["--bnb_4bit_quant_type", "nf4", "--bnb_4bit_use_double_quant"]


def ds(stage: str, **zero) -> list[str]:
    """--deepspeed ds_configs/<stage>.json, or a copy with zero_optimization overrides (written by `probes`)."""
    if zero:
        return ["--deepspeed", "@" + json.dumps([stage, zero])]
    return ["--deepspeed", str(ROOT / "ds_configs" / f"{stage}.json")]


def resolve_ds_flags(flags: list[str], directory) -> list[str]:
    out = []
    for flag in flags:
        if flag.startswith("@"):
            stage, zero = json.loads(flag[1:])
            config = json.loads((ROOT / "ds_configs" / f"{stage}.json").read_text())
            config["zero_optimization"].update(zero)
            path = directory / f"{stage}-{abs(hash(flag[1:]))}.json"
            path.write_text(json.dumps(config))
            flag = str(path)
        out.append(flag)
    return out


# (arch, quant) -> session -> extra flags: one launch runs all sessions of a row
SESSIONS = {
    ("t5", "8bit"): {"zero3": ds("zero3"), "zero3_offload": ds("zero3_offload"), "zero2": ds("zero2")},
    ("llama", "8bit"): {"zero3": ds("zero3"), "zero3_offload": ds("zero3_offload"), "zero2": ds("zero2"),
                        # control: bitsandbytes' own layer under ZeRO-3, without lrpt's conversion (loaded
                        # whole: the sharded load builds lrpt's layers as it loads)
                        "zero3_bnb_native": ds("zero3") + ["--quantized_load", "whole"]},
    ("t5", "4bit"): {"zero3": ds("zero3") + NF4_DQ, "zero3_offload": ds("zero3_offload") + NF4_DQ,
                     "zero2": ds("zero2") + NF4_DQ},
    ("llama", "4bit"): {
        # fp4, double quant, packed into bf16 storage (fp32 run: DeepSpeed casts nothing). DeepSpeed's
        # persistence threshold (10 x hidden = 640 stored elements) counts bf16 elements of 4 weights
        # each: the tiny k/v projections (512 elements) would stay whole on every rank; lower it here
        "zero3": ds("zero3", stage3_param_persistence_threshold=256)
                 + ["--bnb_4bit_use_double_quant", "--bnb_4bit_quant_storage", "bf16"],
        "zero3_offload": ds("zero3_offload") + NF4_DQ,
        "zero2": ds("zero2") + ["--bnb_4bit_quant_type", "nf4"],
        # no double quant: fp32 absmax per 64 weights is replicated (1/8 of the packed bytes)
        "zero3_single": ds("zero3") + ["--bnb_4bit_quant_type", "nf4"],
        # control: bitsandbytes' own 4-bit forward under ZeRO-3 (MatMul4Bit keeps the gathered weight)
        "zero3_bnb_native": ds("zero3") + NF4_DQ + ["--quantized_load", "whole"],
    },
}
CELLS = [(arch, q, s) for (arch, q), sessions in SESSIONS.items() for s in sessions]
PROBE_FLAGS = ["--method", "dpt", "--prompt_length", "8", "--per_device_train_batch_size", "2", "--seed", "5",
               "--warmup_ratio", "0", "--max_steps", "3", "--progress", "false"]


def quant_kwargs(flags: list[str]) -> dict:
    """RunConfig keywords of the quantization flags in a flag list."""
    kw, i = {}, 0
    while i < len(flags):
        name = flags[i].lstrip("-")
        if name.startswith(("load_in_", "bnb_4bit_")):
            if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
                kw[name], i = flags[i + 1], i + 2
                continue
            kw[name] = True
        i += 1
    return kw


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8)  # packed 4-bit bytes may read as NaN in bf16 storage


# ---------------------------------------------------------------- the unsharded reference

_references: dict = {}


def reference(model_dir: str, kw: dict, batches: list[dict]):
    """One process, no DeepSpeed: the unsharded quantized model, the same prompt init and micro-batches.
    Returns the model, each batch's loss and prompt gradient, and the quantized layers' held bytes."""
    key = (model_dir, tuple(sorted(kw.items())), json.dumps([{k: v.tolist() for k, v in b.items()} for b in batches]))
    if key not in _references:
        cfg = RunConfig(model=model_dir, method="dpt", prompt_length=8, seed=5, **kw)
        backbone = load_backbone(model_dir, quantization=quant.bnb_config(cfg))
        torch.manual_seed(cfg.seed)
        model = PromptedModel(backbone.model, build_prompt(cfg, backbone), backbone.is_encoder_decoder).train()
        losses, grads = [], []
        for batch in batches:
            loss = model(**batch).loss
            losses.append(loss.detach())
            grads.append(torch.autograd.grad(loss, list(model.prompt.parameters())))
        layers = {n: m for n, m in model.backbone.named_modules() if quant.is_quantized_layer(m)}
        _references[key] = (model, layers, losses, grads, held_bytes(layers.values()))
    return _references[key]


# ---------------------------------------------------------------- 2 ranks, one launch per (arch, quant)

@pytest.fixture(scope="module")
def probes(backbone_dirs, memorise_dir, tmp_path_factory):
    done = {}

    def get(arch: str, q: str):
        if (arch, q) not in done:
            out = tmp_path_factory.mktemp(f"probe-{arch}-{q}")
            flags = [*PROBE_FLAGS, "--model", backbone_dirs[arch], "--task", "rte", "--data_dir", str(memorise_dir),
                     *QUANT_FLAGS[q]]
            sessions = {name: resolve_ds_flags(extra, out) for name, extra in SESSIONS[(arch, q)].items()}
            launch("tests/quant_probe.py", [str(out), json.dumps(sessions), "--", *flags])
            done[(arch, q)] = out
        return done[(arch, q)]

    return get


@pytest.mark.parametrize("arch, q, session", CELLS)
def test_two_ranks_match_the_unsharded_quantized_model(arch, q, session, probes, backbone_dirs):
    out = probes(arch, q) / session
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    shards = [torch.load(out / f"shards{r}.pt") for r in (0, 1)]
    kw = quant_kwargs(QUANT_FLAGS[q] + SESSIONS[(arch, q)][session])
    batches = [{k: torch.tensor(v) for k, v in r["batch"].items()} for r in ranks]
    model, layers, losses, grads, ref_held = reference(backbone_dirs[arch], kw, batches)
    stage = 2 if session == "zero2" else 3
    native = session.endswith("bnb_native")
    zero = "Zero" if stage == 3 and not native else ""
    expect_type = {"8bit": f"{zero}Linear8bitLt" if not zero else "ZeroLinear8bit", "4bit": f"{zero}Linear4bit"}[q]

    for r, result in enumerate(ranks):
        assert result["stage"] == stage and result["world_size"] == 2
        assert result["layer_types"] == [expect_type] and result["quantized_layers"] == len(layers) > 0
        # the numbers: loss and the data-parallel prompt gradient equal the unsharded quantized model's
        torch.testing.assert_close(torch.tensor(result["loss"]), losses[r], **LOSS_TOL)
        for i, (name, _) in enumerate(model.prompt.named_parameters()):
            torch.testing.assert_close(torch.tensor(result["grads"][name]), (grads[0][i] + grads[1][i]) / 2, **GRAD_TOL)
        assert result["step_losses"][-1] < result["step_losses"][0], result["step_losses"]

    if session == "zero2":  # ZeRO-2 shards no parameter: every rank holds the whole quantized backbone
        for result in ranks:
            assert result["sharded_quantized_weights"] == 0
            assert result["held_after_first_step"]["quantized_layers"] == ref_held
        return

    if native:  # right numbers, but the checks below catch the full copies bitsandbytes keeps
        for result in ranks:
            # 8-bit: state.CB, the whole int8 matrix; 4-bit: MatMul4Bit's saved view of the gathered weight
            assert result["full_copies_alive"] >= len(layers)
            if q == "8bit":
                assert result["held_after_first_step"]["quantized_layers"] > ref_held  # shard + full copy
                assert result["loss_after_rank1_zeroed"] == result["loss_before_corruption"]  # shards unused
        return

    for r, (result, shard) in enumerate(zip(ranks, shards)):
        assert result["sharded_quantized_weights"] == len(layers)
        # each rank's shard is its slice of the reference weight; the statistics are replicated whole
        for name, layer in layers.items():
            full = as_bytes(layer.weight.data).flatten()
            part = as_bytes(shard[name]["shard"])
            per_rank = part.numel()
            assert per_rank == math.ceil(full.numel() / 2)
            valid = max(0, min(per_rank, full.numel() - r * per_rank))
            assert torch.equal(part[:valid], full[r * per_rank:r * per_rank + valid]), name
            if q == "8bit":
                scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
                assert torch.equal(shard[name]["scb"], scb), name
            else:
                assert torch.equal(shard[name]["absmax"], layer.weight.quant_state.absmax), name
        # memory: the quantized layers hold their shards plus the small replicated statistics, nothing else
        held = result["held_after_first_step"]
        shard_bytes = sum(s["shard"].numel() * s["shard"].element_size() for s in shard.values())
        stats = (sum(s["scb"].numel() * 4 for s in shard.values()) if q == "8bit" else held["quant_state"])
        assert held["quantized_layers"] == shard_bytes + stats + held["still_gathered"]
        assert held["still_gathered"] == 0
        assert result["full_copies_alive"] == 0
        ratio = held["quantized_layers"] / ref_held
        if session == "zero3_single":
            # replicated fp32 absmax (1/8 of the packed bytes) puts the floor at (1/2 + 1/8) / (1 + 1/8) = 55.6 %;
            # double quantization (the other 4-bit sessions) brings the replicated part to ~1/32
            assert ratio <= 0.557, ratio
        else:
            assert ratio <= SHARDED_LIMIT, ratio
        # corrupting rank 1's shards of the quantized layers changes every rank's loss: they compute from them
        assert result["gathered_after_release"] == 0
        assert abs(result["loss_after_rank1_zeroed"] - result["loss_before_corruption"]) > 1e-3
        assert result["loss_after_restore"] == result["loss_before_corruption"]


@pytest.mark.parametrize("arch, q", list(SESSIONS))
def test_two_rank_report_memory(arch, q, probes):
    """`fit` to the end (evaluation included) under ZeRO-3, and its report: attribute-aware held bytes
    per rank, the unquantized size, the load peak."""
    out = probes(arch, q) / "zero3"
    report = json.loads((out / "run" / "report.json").read_text())
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    mem = report["memory"]
    assert report["zero_stage"] == 3 and report["world_size"] == 2
    assert mem["backbone_bytes_held_all"] == [r["held_after_first_step"]["backbone"] for r in ranks]
    assert mem["quant_state_bytes"] == [r["held_after_first_step"]["quant_state"] for r in ranks]
    assert all(0 < held < mem["backbone_bytes_unquantized"] / 2 for held in mem["backbone_bytes_held_all"])
    assert len(mem["load_peak_bytes"]) == 2 and min(mem["load_peak_bytes"]) > 0
    assert report["train"]["steps"] == 3


# ---------------------------------------------------------------- stage 0, one process

def run_config(model_dir, data_dir, out, **kw) -> RunConfig:
    base = dict(model=model_dir, task="rte", data_dir=str(data_dir), output_dir=str(out), method="dpt",
                learning_rate=0.3, prompt_length=8,
                per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=30,
                warmup_ratio=0.0, logging_steps=100, progress=False, seed=0)
    base.update(kw)
    return RunConfig(**base)


def quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The quantized layers' stored state (int8 / packed weights, SCB, quant_state) as raw bytes."""
    state = {}
    for name, module in model.named_modules():
        if quant.is_quantized_layer(module):
            for key, value in module.state_dict(prefix=f"{name}.").items():
                if isinstance(value, torch.Tensor):
                    state[key] = as_bytes(value)
    return state


@pytest.mark.parametrize("arch", ["t5", "llama"])
@pytest.mark.parametrize("kw", [{"load_in_8bit": True}, {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
                                {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
                                 "bnb_4bit_use_double_quant": True}],
                         ids=["8bit", "4bit-nf4", "4bit-fp4-dq"])
def test_quantized_backbone_trains_prompt_only(arch, kw, backbone_dirs, memorise_dir, tmp_path):
    model_dir = backbone_dirs[arch]
    result = train(run_config(model_dir, memorise_dir, tmp_path / "run", **kw))
    report, model = result.report, result.model
    curve = report.train.loss_curve
    assert sum(curve[-5:]) / 5 < 0.9 * curve[0], curve

    backbone = model.backbone
    layers = quant.quantized_layers(backbone)
    import bitsandbytes as bnb
    kind = bnb.nn.Linear8bitLt if "load_in_8bit" in kw else bnb.nn.Linear4bit
    assert layers and all(isinstance(m, kind) for m in layers)
    if arch == "t5":  # T5's _keep_in_fp32_modules (wo) and the head stay unquantized, in the run's precision
        keep = [m for n, m in backbone.named_modules() if n.endswith("DenseReluDense.wo")] + [backbone.lm_head]
        assert keep and all(type(m) is nn.Linear and m.weight.dtype == torch.float32 for m in keep)
    if kind is bnb.nn.Linear4bit:
        assert not any(m.support_avx512bf16_for_cpu for m in layers)  # the eval-time repack stays off

    # only the prompt has gradients; the prompt's factors are full precision
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.prompt.parameters())
    optimizer = result.engine.optimizer
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.prompt.parameters()}

    # the quantized weights are bit-identical to a fresh quantized load
    fresh = load_backbone(model_dir, quantization=quant.bnb_config(RunConfig(model=model_dir, **kw))).model
    before, after = quantized_state(fresh), quantized_state(backbone)
    assert before.keys() == after.keys() and before
    for name in before:
        assert torch.equal(before[name], after[name]), name

    # the report's memory: attribute-aware held bytes, the unquantized size
    mem = report.memory
    assert mem.backbone_bytes_unquantized == 4 * sum(quant.logical_numel(p) for p in fresh.parameters())
    # measured after the first step; evaluation may add bnb's small outlier caches (8-bit eval kernel)
    held_now = held_bytes(backbone.modules())
    assert mem.backbone_bytes_held_all[0] <= held_now <= 1.01 * mem.backbone_bytes_held_all[0]
    assert mem.backbone_bytes_held_all[0] > mem.backbone_bytes_held[0]  # + SCB / quant_state
    assert mem.backbone_bytes_held_all[0] < 0.6 * mem.backbone_bytes_unquantized
    assert (mem.quant_state_bytes[0] > 0) == ("load_in_4bit" in kw)


def test_quantized_preset_loads_through_from_pretrained():
    """Presets are written out and loaded with from_pretrained - also once torch.distributed is up,
    where transformers' save_pretrained writes on rank 0 only (each rank needs its own copy)."""
    from lrpt.trainer.runtime import distributed
    from lrpt.trainer.backbone.presets import build_preset

    distributed.init_process_group()  # the one-process group `train` makes
    backbone = load_backbone("tiny-llama", quantization=quant.bnb_config(RunConfig(load_in_8bit=True)))
    assert len(quant.quantized_layers(backbone.model)) == 14
    preset, _ = build_preset("tiny-llama")
    torch.testing.assert_close(backbone.model.get_input_embeddings().weight, preset.get_input_embeddings().weight,
                               rtol=0, atol=0)


# ---------------------------------------------------------------- refusals, before any weight loads

@pytest.fixture(scope="module")
def config_only_dirs(tmp_path_factory) -> dict[str, str]:
    """Backbones that are only a config.json: loading a weight from them is impossible."""
    dirs = {}
    for arch, name in (("t5", "tiny-t5"), ("llama", "tiny-llama")):
        path = tmp_path_factory.mktemp(f"config-only-{arch}")
        preset_config(name, width=64).save_pretrained(path)
        dirs[arch] = str(path)
    return dirs


def ds_file(tmp_path, zero: dict, **extra) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": zero, **extra}))
    return str(path)


REFUSALS = [
    # (arch, flags, stage config, expected message fragment)
    ("llama", dict(load_in_4bit=True, bnb_4bit_quant_storage="bf16", precision="fp16"), "zero3",
     "--bnb_4bit_quant_storage uint8"),
    ("llama", dict(load_in_4bit=True, bnb_4bit_quant_storage="bf16", precision="fp16"), "zero0",
     "DeepSpeed casts every floating-point parameter to fp16"),
    ("llama", dict(load_in_4bit=True, bnb_4bit_quant_storage="fp32", precision="bf16"), "zero2", "or bf16"),
    ("llama", dict(load_in_4bit=True, bnb_4bit_quant_storage="fp16", precision="bf16"), "zero3_offload",
     "by value"),
    ("t5", dict(load_in_8bit=True, precision="fp16"), "zero3", "Use --precision bf16"),
    ("t5", dict(load_in_4bit=True, precision="fp16"), "zero0", "Use --precision bf16"),
    ("llama", dict(load_in_8bit=True, load_in_4bit=True), "zero0", "exclusive"),
    ("llama", dict(bnb_4bit_quant_type="nf4"), "zero0", "add --load_in_4bit"),
    ("llama", dict(load_in_8bit=True, bnb_4bit_use_double_quant=True), "zero0", "add --load_in_4bit"),
    ("llama", dict(load_in_4bit=True, bnb_4bit_quant_type="int4"), "zero0", "nf4 or fp4"),
    ("llama", dict(load_in_8bit=True), {"stage": 3, "offload_param": {"device": "nvme"}}, "offload_param.device = cpu"),
    ("t5", dict(load_in_8bit=True), ({"stage": 3}, {"data_types": {"buffer_dtype": "bf16"}}), "buffer_dtype"),
]


@pytest.mark.parametrize("arch, kw, stage, message", REFUSALS)
def test_refused_before_weights_load(arch, kw, stage, message, config_only_dirs, tmp_path, monkeypatch):
    if isinstance(stage, str):
        deepspeed = str(ROOT / "ds_configs" / f"{stage}.json")
    else:
        zero, extra = stage if isinstance(stage, tuple) else (stage, {})
        deepspeed = ds_file(tmp_path, zero, **extra)
    cfg = RunConfig(model=config_only_dirs[arch], deepspeed=deepspeed, output_dir=str(tmp_path), **kw)
    with pytest.raises(LrptError, match=message.replace("(", r"\(").replace("-", r"\-")):
        check_run(cfg)

    def no_loading(*args, **kwargs):
        raise AssertionError("a weight was about to load")

    monkeypatch.setattr("lrpt.trainer.backbone.load.load_backbone", no_loading)
    monkeypatch.setattr("lrpt.trainer.train.loop.distributed.init_process_group", no_loading)
    with pytest.raises(LrptError):
        setup(cfg)


def test_refusal_from_the_cli_names_the_alternative(config_only_dirs, tmp_path):
    lrpt = os.path.join(os.path.dirname(sys.executable), "lrpt")
    done = subprocess.run([lrpt, "train", "--model", config_only_dirs["llama"], "--load_in_4bit",
                           "--bnb_4bit_quant_storage", "bf16", "--precision", "fp16", "--output_dir", str(tmp_path)],
                          env=clean_env(), capture_output=True, text=True)
    assert done.returncode == 2 and "--bnb_4bit_quant_storage uint8" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_supported_cells_pass_the_check(config_only_dirs):
    for arch in ("t5", "llama"):
        for stage in ("zero0", "zero2", "zero3", "zero3_offload"):
            for kw in ({}, {"load_in_8bit": True}, {"load_in_4bit": True},
                       {"load_in_4bit": True, "bnb_4bit_quant_storage": "bf16", "precision": "bf16"}):
                check_run(RunConfig(model=config_only_dirs[arch], deepspeed=str(ROOT / "ds_configs" / f"{stage}.json"),
                                    **kw))


@pytest.mark.parametrize("kw", [{"load_in_8bit": True}, {"load_in_4bit": True},
                                {"load_in_4bit": True, "bnb_4bit_quant_storage": "fp32"}],
                         ids=["8bit", "4bit-uint8", "4bit-fp32-storage"])
def test_model_flops_count_the_weights_computed_with(kw, backbone_dirs):
    """A quantized weight computes as its unquantized self: the FLOPs' N is the unquantized backbone's, which is
    counted here by hand from the linear layers' shapes (in x out per nn.Linear, plus the LM head), not from the
    parameters' storage, where a 4-bit weight holds 2 (uint8) or 8 (fp32 storage) values per stored element."""
    plain = load_backbone(backbone_dirs["llama"]).model
    by_hand = sum(m.in_features * m.out_features for m in plain.model.modules() if isinstance(m, nn.Linear))
    head = plain.lm_head.in_features * plain.lm_head.out_features
    quantized = load_backbone(backbone_dirs["llama"], quantization=quant.bnb_config(RunConfig(**kw))).model
    stored = sum(p.numel() for m in quantized.model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    assert stored < by_hand if "load_in_4bit" in kw else stored == by_hand  # the packing the count must undo
    norms = sum(p.numel() for n, p in plain.model.named_parameters() if "norm" in n)
    expected = {"decoder": by_hand + norms + head, "head": head}
    for model in (plain, quantized):
        params = matmul_params(model, is_encoder_decoder=False)
        assert {k: params[k] for k in expected} == expected
