"""Figures the project reports, each checked against a reference that is not the code under test:
tokens counted from the rows, FLOPs measured by torch's FlopCounterMode, vendor datasheet peaks,
effective rank by hand, SQuAD v1.1's official normalisation, DPT's hyper-parameters, a planner scan."""
from __future__ import annotations

import itertools
import math
import re
import string
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoTokenizer

from lrpt import methods
from lrpt.eval.data import row_examples
from lrpt.eval.metrics import normalize_answer
from lrpt.eval.tasks import get_task
from lrpt.trainer.measure import flops
from lrpt.trainer.train import loop, run_loop
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.measure.plan import PlanSpec, plan
from lrpt.trainer.model.prompted import PromptedModel
from lrpt.trainer.rundir.report import Report
from lrpt.trainer.cli.spectrum import spectrum

from conftest import MEMORISE

PEAK = 1e12  # a made-up device peak, so that a CPU run reports an MFU


# ---------------------------------------------------------------- 1. tokens in report.json


@pytest.fixture(scope="module", params=["t5", "llama"])
def lamp_run(request, backbone_dirs, memorise_dir, tmp_path_factory):
    """LAMP, c = 5, p = 2 (3 prompt tokens reach the backbone); 4 rows, batch 4: one step per epoch, 4
    steps, all measured (warm-up min(2, 4 // 5) = 0). The device peak is patched to PEAK."""
    model_dir = backbone_dirs[request.param]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_loop, "device_peak_flops", lambda precision: PEAK)
        report = loop.train(RunConfig(model=model_dir, task="rte", data_dir=str(memorise_dir), method="lamp",
                                      prompt_length=5,
                                      pool=2, rank=2, max_steps=4, per_device_train_batch_size=4, progress=False,
                                      output_dir=str(tmp_path_factory.mktemp("lamp")))).report
    return request.param, model_dir, report


def counted(report: Report, rate: str) -> float:
    """A per-second figure of report.json times the measured seconds: the count behind the rate."""
    rank0 = report.throughput.per_rank[0]
    return getattr(report.throughput, rate) * rank0.steps_measured * rank0.step_time_s.mean


def test_report_counts_pooled_prompt_tokens_and_each_input_token_once(lamp_run):
    """Reference: the four training rows tokenized here with the tiny model's own tokenizer (ByT5: bytes + eos).
    Input tokens per epoch = non-pad tokens of every row (T5: encoder source + decoder labels; LLaMA: source and
    answer in one sequence); prompt tokens = ⌈c/p⌉ = ⌈5/2⌉ = 3 per example. Tolerance: the counts come back
    from rate x seconds in floating point (1e-9 relative)."""
    arch, model_dir, report = lamp_run
    tok = AutoTokenizer.from_pretrained(model_dir)
    task = get_task("rte")
    per_epoch = 0
    for row in MEMORISE:
        (example,) = row_examples(task, dict(row), train=True)
        if arch == "t5":  # </s> after the source and after the target
            per_epoch += len(tok(example["source"])["input_ids"]) + len(tok(example["target"])["input_ids"])
        else:  # source, " target", eos (the tiny preset has no bos)
            assert tok.bos_token_id is None
            per_epoch += len(tok(example["source"], add_special_tokens=False)["input_ids"])
            per_epoch += len(tok(" " + example["target"], add_special_tokens=False)["input_ids"]) + 1
    steps = report.throughput.per_rank[0].steps_measured
    assert steps == 4 and report.data.train_batch_size == len(MEMORISE)  # every step: every row once
    assert counted(report, "input_tokens_per_s") == pytest.approx(steps * per_epoch, rel=1e-9)
    assert counted(report, "prompt_tokens_per_s") == pytest.approx(steps * len(MEMORISE) * math.ceil(5 / 2), rel=1e-9)
    assert counted(report, "samples_per_s") == pytest.approx(steps * len(MEMORISE), rel=1e-9)


# ---------------------------------------------------------------- 2. FLOPs against FlopCounterMode


def measured_step(model_dir: str, prompt_length: int, rows: int, source: int, target: int):
    """One real forward + backward of PromptedModel (built as trainer/train/loop.py builds it, with a plain prompt,
    which does no matmul of its own) under FlopCounterMode, and step_flops of the same batch. Attention runs eager:
    torch has no FLOP formula for the CPU's fused sdpa kernel, and the eager path computes the same products as
    matmuls."""
    backbone = load_backbone(model_dir)
    backbone.model.set_attn_implementation("eager")
    prompt = methods.build("pt", prompt_length, backbone.embed_dim, init="random")
    model = PromptedModel(backbone.model, prompt, backbone.is_encoder_decoder)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 250, (rows, source), generator=generator)
    labels = torch.randint(3, 250, (rows, target), generator=generator) if backbone.is_encoder_decoder else ids
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    ops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(ops) == {"aten.mm", "aten.bmm"}  # weight matmuls (mm), activation x activation (bmm)
    params = flops.matmul_params(backbone.model, backbone.is_encoder_decoder)
    return backbone.model, ops["aten.mm"] + ops["aten.bmm"], flops.step_flops(backbone.model.config, params, batch,
                                                                              prompt.output_length)


def not_matmul(stack: nn.Module, embedding: nn.Module) -> int:
    """Parameters of a stack that are no linear layer's weight (norm scales, T5's relative-position bias)."""
    skip = {id(m.weight) for m in stack.modules() if isinstance(m, nn.Linear)} | {id(embedding.weight)}
    return sum(p.numel() for p in stack.parameters() if id(p) not in skip)


def test_t5_step_flops_match_flop_counter(tiny_t5_dir):
    """Reference: FlopCounterMode on a real step of the tiny T5 (c = 24, 2 rows of 20 input and 4 target tokens).
    trainer/measure/flops.py counts model FLOPs, which differ from the computed ones in three stated ways, each computed
    here by hand so that the match is exact (any term off by a factor fails):
    - N includes the norm scales and relative-position bias tables, which are no matmuls: 4·rows·T·those;
    - the first decoder layer's self-attention (q, k, v, o) and cross-attention query act on the frozen target
      embeddings: nothing computes their input gradient (2·rows·T_t·5·d·w), its self-attention scores have no
      backward (8·T_t²·w) and its cross-attention scores no gradient for the query (2·T_t·T_s·w);
    - causal self-attention is counted as half of the T_t x T_t square the eager kernel computes (6·T_t²·w)."""
    model, measured, formula = measured_step(tiny_t5_dir, prompt_length=24, rows=2, source=20, target=4)
    c = model.config
    r, s, t, d, w = 2, 24 + 20, 4, c.d_model, c.num_heads * c.d_kv
    embed = model.get_input_embeddings()
    norms = 4 * r * (s * not_matmul(model.encoder, embed) + t * not_matmul(model.decoder, embed))
    first_decoder_layer = 2 * r * t * 5 * d * w + r * w * (8 * t * t + 2 * t * s)
    causal = r * w * c.num_decoder_layers * 6 * t * t
    assert measured == formula - norms - first_decoder_layer + causal


def test_llama_step_flops_match_flop_counter(tiny_llama_dir):
    """Reference: FlopCounterMode on a real step of the tiny LLaMA (c = 24, 2 rows of 20 tokens). Exact once the
    formula's two stated conventions are undone by hand: N includes the RMSNorm scales (no matmuls), and causal
    attention is counted as half of the T x T square the eager kernel computes (6·T²·d per layer)."""
    model, measured, formula = measured_step(tiny_llama_dir, prompt_length=24, rows=2, source=20, target=0)
    c = model.config
    r, t = 2, 24 + 20
    norms = 4 * r * t * not_matmul(model.model, model.get_input_embeddings())
    causal = r * c.hidden_size * c.num_hidden_layers * 6 * t * t
    assert measured == formula - norms + causal


def test_shared_prefix_step_flops_match_flop_counter(tiny_llama_dir):
    """Reference: FlopCounterMode on a real step of the shared path (c = 24, 3 rows of 20 tokens, the last 8 of
    each row targets). The prompt runs once: the layers over c + 3·20 tokens, the head and the last layer's output
    projection and MLP over the 3·8 predicted positions only. Exact once the formula's conventions are undone by
    hand: the RMSNorm scales (no matmuls) over those tokens, and causal squares counted as halves, the prompt's
    c x c and each row's 20 x 20 (6·d per element)."""
    backbone = load_backbone(tiny_llama_dir)
    backbone.model.set_attn_implementation("eager")
    c, r, w = 24, 3, 20
    model = PromptedModel(backbone.model, methods.build("pt", c, backbone.embed_dim, init="random"), False,
                          shared_prefix=True)
    ids = torch.randint(3, 250, (r, w), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :w - 8] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    ops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(ops) == {"aten.mm", "aten.bmm"}
    config = backbone.model.config
    params = flops.matmul_params(backbone.model, False)
    formula = flops.step_flops(config, params, batch, c, shared_prefix=True)
    norms = 4 * (c + r * w) * not_matmul(backbone.model.model, backbone.model.get_input_embeddings())
    causal = 6 * config.hidden_size * config.num_hidden_layers * (c * c + r * w * w)
    assert ops["aten.mm"] + ops["aten.bmm"] == formula - norms + causal
    # and what the standard path would compute for the same batch is more, by the prompt's repeats
    assert formula < flops.step_flops(config, params, batch, c)


# ---------------------------------------------------------------- 3. MFU and device peaks


def test_mfu_is_model_flops_over_peak_times_world(lamp_run):
    """Reference: MFU recomputed by hand from the report's own model FLOP/s and the patched peak (1 rank)."""
    _, _, report = lamp_run
    thr = report.throughput
    assert report.world_size == 1 and thr.model_flops_per_s > 0
    assert thr.mfu == pytest.approx(thr.model_flops_per_s / PEAK, rel=1e-12)


def test_mfu_adds_rank_rates_and_divides_by_every_device(monkeypatch):
    """Reference: two ranks at 2e11 and 3e11 FLOP/s on devices of 1e12: (2e11 + 3e11) / (2 x 1e12) = 0.25."""
    monkeypatch.setattr(run_loop, "device_peak_flops", lambda precision: PEAK)

    def rank(model_flops: float) -> dict:
        step = {"mean": 1.0, "p50": 1.0, "p95": 1.0}
        rates = dict.fromkeys(("samples_per_s", "tokens_per_s", "input_tokens_per_s", "prompt_tokens_per_s"), 1.0)
        return {"throughput": {"steps_measured": 3, "warmup_steps": 0, "step_time_s": step, **rates,
                               "model_flops_per_s": model_flops},
                "memory": {"peak_bytes": 1, "measured_by": "test"}, "backbone_bytes": {"held": 1, "total": 2},
                "load_peak_bytes": 1, "load_peak_measured_by": "test",
                "backbone_memory": {"held_all": 1, "unquantized": 1, "quant_state": 0},
                "optimizer_state_bytes": 8}

    prompt = methods.build("pt", 4, 8, init="random")
    state = {"step": 3, "loss_curve": [1.0], "eval_history": []}
    report = run_loop.build_report(RunConfig(), prompt, state, 3, {}, [rank(2e11), rank(3e11)], 2, 3, {})
    assert report.throughput.model_flops_per_s == 5e11
    assert report.throughput.mfu == pytest.approx(0.25, rel=1e-12)


# Dense (no sparsity) peaks from NVIDIA's datasheets, in TFLOP/s. The sheets print the sparse tensor figure
# ("with sparsity", *); dense is half of it. FP32 is the non-tensor-core figure the sheets give as "FP32".
# A100 (SXM4 and PCIe, 40/80 GB): BF16 312 (624*), FP32 19.5.
# H100 SXM: BF16 1,979* -> 989.4, FP32 67; H100 PCIe: 1,513* -> 756.5, FP32 51; H100 NVL: 1,671* -> 835.5, FP32 60.
# H200 SXM: as H100 SXM (1,979* -> 989.4, FP32 67); H200 NVL: 1,671* -> 835.5, FP32 60.
DATASHEET = [
    ("NVIDIA A100-SXM4-80GB", 312, 19.5), ("NVIDIA A100-SXM4-40GB", 312, 19.5), ("NVIDIA A100 80GB PCIe", 312, 19.5),
    ("NVIDIA H100 80GB HBM3", 989.4, 67), ("NVIDIA H100 PCIe", 756.5, 51), ("NVIDIA H100 NVL", 835.5, 60),
    ("NVIDIA H200", 989.4, 67), ("NVIDIA H200 NVL", 835.5, 60),
]


@pytest.mark.parametrize("device, bf16, fp32", DATASHEET)
def test_device_peak_table_matches_datasheets(device, bf16, fp32, monkeypatch):
    """Reference: the datasheet figures above, looked up by the name torch.cuda reports. Tolerance 0.1%: the table
    keeps whole TFLOP/s (989 for 989.4)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: device)
    assert flops.device_peak_flops("bf16") == pytest.approx(bf16 * 1e12, rel=1e-3)
    assert flops.device_peak_flops("fp32") == pytest.approx(fp32 * 1e12, rel=1e-3)


# ---------------------------------------------------------------- 4. effective rank


def test_effective_rank_of_known_singular_values():
    """Reference: Roy & Vetterli's effective rank exp(H(σ/Σσ)) by hand. σ = (4, 2, 1, 1): p = (1/2, 1/4, 1/8, 1/8),
    H = 1.75·ln 2, so erank = 2^1.75 (with σ² it would be 2.14). Energy: cumulative σ² share, (16, 20, 21, 22)/22.
    Tolerance 1e-9: the SVD runs in float64."""
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64, generator=generator))
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    result = spectrum(u @ torch.diag(sigma) @ v.T)
    assert result["singular_values"] == pytest.approx([4, 2, 1, 1], abs=1e-9)
    assert result["effective_rank"] == pytest.approx(2 ** 1.75, rel=1e-9)
    assert result["energy"] == pytest.approx([16 / 22, 20 / 22, 21 / 22, 1.0], rel=1e-9)
    assert result["numerical_rank"] == 4 and result["rank_for_90"] == 2 and result["rank_for_99"] == 4


# ---------------------------------------------------------------- 5. SQuAD normalisation


def official_normalize(s: str) -> str:
    """SQuAD v1.1's evaluate-v1.1.py, normalize_answer, as published:
    white_space_fix(remove_articles(remove_punc(lower(s))))."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


# Each input tells the official order apart from a wrong one: "The-End" (articles before punctuation: "end"),
# "The Cat" (articles before lowercasing keeps "the"), "a  cat" (whitespace collapsed before articles leaves a
# space), "x.the.y" (punctuation joins "xthey": no article left), "An apple, the pie!".
SQUAD_INPUTS = ["The-End", "The Cat", "a  cat", "x.the.y", "An apple, the pie!", "A.B", "  the  THE   end "]


def test_normalize_answer_matches_the_official_squad_script():
    """Reference: the official script re-written above; plus a check that the inputs do catch a wrong order."""
    steps = {"lower": str.lower, "punc": lambda s: "".join(c for c in s if c not in string.punctuation),
             "articles": lambda s: re.sub(r"\b(a|an|the)\b", " ", s), "space": lambda s: " ".join(s.split())}
    for text in SQUAD_INPUTS:
        assert normalize_answer(text) == official_normalize(text), text
    for order in itertools.permutations(steps):
        def run(text, order=order):
            for name in order:
                text = steps[name](text)
            return text
        if order != ("lower", "punc", "articles", "space") and order != ("punc", "lower", "articles", "space"):
            assert any(run(x) != official_normalize(x) for x in SQUAD_INPUTS), order  # the inputs see it


# ---------------------------------------------------------------- 6. DPT's hyper-parameters


def test_defaults_follow_dpts_optimisation_and_the_optimizer_uses_them(tiny_t5_dir, memorise_dir, tmp_path,
                                                                        monkeypatch):
    """Reference: DPT's code values written by hand (AdamW, weight decay 1e-5, clipping 1.0, linear schedule, 10%
    warm-up, 256 source tokens) with the learning rate and c measured on the default backbone (0.01, 20), and the
    learning rate of each of 4 steps by hand: warm-up ⌈0.1 x 4⌉ = 1 step (0 at step 0), then linear decay to 0:
    0, 0.01, 0.00667, 0.00333. Every optimizer.step is
    recorded with its group's lr and weight decay and the norm of the gradients it is given. The loss is scaled
    by 1000 so that the raw gradient norm (about 0.3 on this run) is far above 1: clipping must bring it to 1.0
    (torch's clip_grad_norm_ scales by max_norm / (norm + 1e-6), hence the 1e-4 tolerance)."""
    defaults = RunConfig()
    assert (defaults.learning_rate, defaults.weight_decay, defaults.max_grad_norm, defaults.warmup_ratio) == (
        0.01, 1e-5, 1.0, 0.1)
    assert (defaults.prompt_length, defaults.max_source_length) == (20, 256)

    forward = PromptedModel.forward

    def scaled(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.loss = out.loss * 1000
        return out

    monkeypatch.setattr(PromptedModel, "forward", scaled)
    seen = []

    def record(optimizer, args, kwargs):
        group = optimizer.param_groups[0]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in group["params"] if p.grad is not None]))
        seen.append((type(optimizer), group["lr"], group["weight_decay"], group["betas"], float(norm)))

    handle = register_optimizer_step_pre_hook(record)
    try:
        result = loop.train(RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir),
                                      output_dir=str(tmp_path),
                                      max_steps=4, per_device_train_batch_size=4, progress=False))
    finally:
        handle.remove()
    assert [s[0] for s in seen] == [torch.optim.AdamW] * 4
    assert [s[1] for s in seen] == pytest.approx([0.0, 0.01, 0.02 / 3, 0.01 / 3], abs=1e-12)
    assert {s[2] for s in seen} == {1e-5} and {s[3] for s in seen} == {(0.9, 0.999)}  # torch's AdamW betas
    assert result.engine.gradient_clipping() == 1.0
    assert [s[4] for s in seen] == pytest.approx([1.0] * 4, abs=1e-4)  # clipped to max_grad_norm before each step


# ---------------------------------------------------------------- 7. the planner's "fits on N GPUs"


def test_plan_names_the_fewest_gpus_that_fit(capsys):
    """Reference: the planner's own per-rank figure at 1..64 GPUs (1 per node), scanned here: the fewest that fit.
    LLaMA-70B bf16 at ZeRO-3, micro batch 1 x 512, does not fit one 80 GiB GPU."""
    flags = ["--model", "llama-70b", "--zero", "3", "--method", "pt", "--prompt_length", "100", "--precision", "bf16",
             "--per_device_train_batch_size", "1", "--max_source_length", "495"]
    spec = PlanSpec(model="llama-70b", zero=3, gpus=1, method="pt", prompt_length=100, batch=1,
                    seq_len=495 + 16 + 1, precision="bf16")  # decoder-only: source + answer + bos
    fewest = next(n for n in range(1, 65) if plan(replace(spec, gpus=n)).fits)
    assert fewest > 1
    assert main(["plan", *flags, "--gpus", "1"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit" in out and f"at ZeRO-3 this run fits on {fewest} GPUs (1 per node)" in out
