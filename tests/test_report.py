"""Report fields are present and consistent; the FLOPs formula against a hand count; lrpt bench."""
from __future__ import annotations

import csv
import os

import pytest
import torch

from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.config.ds_config import shipped
from lrpt.trainer.measure.flops import matmul_params, step_flops
from lrpt.trainer.train.loop import train
from lrpt.trainer.backbone.presets import build_preset
from lrpt.trainer.rundir.report import format_table


def test_report_fields_are_consistent(tiny_t5_dir, memorise_dir, tmp_path):
    report = train(RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(tmp_path),
                             method="lopt1",
                             prompt_length=8, max_steps=12, per_device_train_batch_size=4, progress=False)).report
    n = report["trainable_params"]
    tensors = 2  # U, V
    assert report["optimizer_state_bytes"] == 2 * 4 * n + 4 * tensors  # Adam m, v (fp32) + step counters
    thr, rank0 = report["throughput"], report["throughput"]["per_rank"][0]
    assert rank0["steps_measured"] == 12 - rank0["warmup_steps"]
    # tokens/s = tokens / time: the prompt and input parts add up, and samples/s matches the batch
    assert thr["tokens_per_s"] == pytest.approx(thr["prompt_tokens_per_s"] + thr["input_tokens_per_s"])
    seconds = rank0["steps_measured"] * rank0["step_time_s"]["mean"]
    assert thr["samples_per_s"] == pytest.approx(4 * rank0["steps_measured"] / seconds, rel=1e-6)
    assert thr["prompt_tokens_per_s"] == pytest.approx(4 * 8 * rank0["steps_measured"] / seconds, rel=1e-6)
    assert thr["step_time_s"]["p50"] <= thr["step_time_s"]["p95"]
    assert thr["model_flops_per_s"] > 0 and thr["mfu"] is None  # no known peak on CPU
    mem = report["memory"]
    assert mem["backbone_bytes_held"][0] == mem["backbone_bytes_total"] > 0  # one rank holds it all
    assert "RSS" in mem["measured_by"] and mem["peak_bytes"][0] >= mem["load_peak_bytes"][0]


def test_flops_formula_by_hand():
    model, _ = build_preset("tiny-llama", width=64, layers=2)
    params = matmul_params(model, False)
    d, layers, vocab, ff = 64, 2, model.config.vocab_size, 128
    kv = 2 * (64 // 4) * 2  # 2 kv heads of 16, for k and v
    per_layer = d * d * 2 + d * kv + 3 * d * ff + 2 * d  # q, o, k+v, gate/up/down, 2 norms
    assert params["decoder"] == layers * per_layer + d + vocab * d  # + final norm + lm_head
    batch = {"input_ids": torch.zeros(3, 10, dtype=torch.long)}
    t = 10 + 5
    assert step_flops(model.config, params, batch, 5) == 4 * 3 * params["decoder"] * t + 12 * 3 * d * layers * t * t / 2


def test_bench_writes_csv_and_plots(tiny_t5_dir, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--model", tiny_t5_dir, "--methods", "dpt,lamp", "--prompt_lengths", "4,8", "--batch", "2",
                 "--seq_len", "16", "--steps", "2", "--lamp_pool", "2", "--output_dir", str(out)]) == 0
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [(r["method"], r["prompt_length"]) for r in rows] == [
        (m, c) for c in ("4", "8") for m in ("peft", "dpt", "lamp")]
    for r in rows:
        assert float(r["peak_bytes"]) > 0 and float(r["step_time_p50"]) > 0
        assert float(r["step_time_ratio_vs_peft"]) == pytest.approx(
            float(r["step_time_min"]) / float(next(b for b in rows if b["method"] == "peft"
                                                   and b["prompt_length"] == r["prompt_length"])["step_time_min"]))
    lamp = [r for r in rows if r["method"] == "lamp"]
    assert [int(r["prompt_tokens"]) for r in lamp] == [2, 4]  # pooling: c/p tokens reach the backbone
    for name in ("memory.png", "throughput.png"):
        assert (out / name).stat().st_size > 10_000


def test_bench_measures_the_shared_prefix_on_a_decoder_only_backbone(tiny_llama_dir, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--model", tiny_llama_dir, "--methods", "pt", "--prompt_lengths", "8", "--batch", "2",
                 "--seq_len", "16", "--steps", "2", "--flush_denormal", "false", "--output_dir", str(out)]) == 0
    rows = {r["path"]: r for r in csv.DictReader((out / "bench.csv").open())}
    assert set(rows) == {"peft", "standard", "shared_prefix"}
    assert {r["flush_denormal"] for r in rows.values()} == {"False"}  # as torch starts: denormals computed
    shared, standard = rows["shared_prefix"], rows["standard"]
    assert float(shared["throughput_ratio_vs_standard"]) == pytest.approx(
        float(standard["step_time_min"]) / float(shared["step_time_min"]))
    assert float(standard["throughput_ratio_vs_standard"]) == 1.0


def test_bench_runs_zero3_ranks_quantized_with_checkpointing(tiny_llama_dir, tmp_path):
    """The configurations the shared prefix is benchmarked in: ZeRO-3 on 2 ranks (the deepspeed launcher), an
    8-bit backbone, gradient checkpointing. Reference for the counts: c x hidden trainable values (ZeRO-3 shards
    them, ds_numel is the whole), the world size the launcher was asked for."""
    out = tmp_path / "bench"
    assert main(["bench", "--model", tiny_llama_dir, "--methods", "pt", "--prompt_lengths", "4", "--batch", "2",
                 "--seq_len", "16", "--steps", "1", "--deepspeed", shipped("zero3"), "--ranks", "2",
                 "--load_in_8bit", "--gradient_checkpointing", "--output_dir", str(out)]) == 0
    rows = {r["path"]: r for r in csv.DictReader((out / "bench.csv").open())}
    assert set(rows) == {"peft", "standard", "shared_prefix"}
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // 2))
    for r in rows.values():
        assert int(r["ranks"]) == 2 and int(r["trainable_params"]) == 4 * 64
        assert int(r["threads"]) == threads  # each rank its share of the cores, not one thread per core
        assert r["flush_denormal"] == "True"  # the default, in every configuration: peft's as lrpt's
        assert float(r["eval_s_per_example"]) > 0
    assert float(rows["shared_prefix"]["eval_speedup_vs_standard"]) == pytest.approx(
        float(rows["standard"]["eval_s_per_example"]) / float(rows["shared_prefix"]["eval_s_per_example"]))


def test_bench_repeats_alternate_and_keep_each_configurations_fastest_launch(tiny_llama_dir, tmp_path, monkeypatch):
    """--repeats 3: the plan, then reversed, then again; each row is its fastest launch (step time), its
    fastest evaluation and its highest peak, and the ratios are computed from those. The launches are
    stand-ins with hand-set figures (the worker itself is measured by the tests above)."""
    from lrpt.trainer.bench import throughput

    launches, figures = [], iter([  # (step s, eval s, peak) in launch order
        (4.0, 0.5, 100), (3.0, 0.4, 90), (2.0, 0.3, 80),  # pass 1: peft, standard, shared
        (1.0, 0.35, 70), (3.5, 0.2, 95), (2.5, 0.1, 85),  # pass 2, reversed: shared, standard, peft
        (5.0, 0.6, 60), (2.9, 0.9, 99), (1.5, 0.5, 75)])  # pass 3: peft, standard, shared

    def launch(settings, method, c, path):
        step, evaluation, peak = next(figures)
        launches.append((method, path))
        return {"method": method, "path": "peft" if method == "peft" else path, "loop": "plain", "prompt_length": c,
                "prompt_tokens": c, "ranks": 1, "trainable_params": 1, "step_time_p50": step, "step_time_min": step,
                "samples_per_s": 1 / step, "tokens_per_s": 1 / step, "eval_s_per_example": evaluation,
                "peak_bytes": peak, "measured_by": "hand"}

    monkeypatch.setattr(throughput, "run_isolated", launch)
    out = tmp_path / "bench"
    assert main(["bench", "--model", tiny_llama_dir, "--methods", "pt", "--prompt_lengths", "8", "--repeats", "3",
                 "--output_dir", str(out)]) == 0
    order = [("peft", "standard"), ("pt", "standard"), ("pt", "shared_prefix")]
    assert launches == order + order[::-1] + order
    rows = {r["path"]: r for r in csv.DictReader((out / "bench.csv").open())}
    expected = {"peft": (2.5, 0.1, 100), "standard": (2.9, 0.2, 99), "shared_prefix": (1.0, 0.3, 80)}
    for path, (step, evaluation, peak) in expected.items():
        row = rows[path]
        assert (float(row["step_time_min"]), float(row["eval_s_per_example"]), int(row["peak_bytes"])) == (
            step, evaluation, peak)
    assert float(rows["shared_prefix"]["throughput_ratio_vs_peft"]) == pytest.approx(2.5 / 1.0)
    assert float(rows["shared_prefix"]["throughput_ratio_vs_standard"]) == pytest.approx(2.9 / 1.0)


def test_the_report_holds_the_untrained_prompts_metrics(tiny_t5_dir, memorise_dir, tmp_path):
    """--eval_untrained scores the prompt before step 1. Reference: the same run (same seed, so the same initial
    prompt) trained at a learning rate too small to move it, whose final evaluation is of that prompt. Not
    measured, or measured of another prompt, the untrained metrics differ (on SmolLM2 they are apart from the
    trained prompt's: 0.5625 -> 0.7656 on held-out sentiment rows)."""
    common = dict(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), method="pt", prompt_length=8, max_steps=12,
                  per_device_train_batch_size=4, decoding="rank", progress=False, report_to="none")
    learns = train(RunConfig(output_dir=str(tmp_path / "learns"), learning_rate=0.3, **common)).report
    frozen = train(RunConfig(output_dir=str(tmp_path / "frozen"), learning_rate=1e-12, eval_untrained=False,
                             **common)).report
    assert frozen["metrics_untrained"] is None
    assert learns["metrics_untrained"] == frozen["metrics"]
    table = format_table(learns)
    assert f"{learns['metrics_untrained']['accuracy']:.4f} -> {learns['metrics']['accuracy']:.4f}" in table


def test_the_learning_study_summarises_seeds_by_hand():
    """The study's table: per method, step 0's accuracy (untrained) and the last scored step's, mean and sample
    std over seeds, and the mean loss of each seed's last 10 steps; rates by method with a default."""
    from lrpt.trainer.bench.learning import learning_rates, rows_of, summary

    rows = (rows_of("pt", 1, 0.01, [float(x) for x in range(12, 0, -1)], {0: 0.5, 6: 0.6, 12: 0.75})
            + rows_of("pt", 2, 0.01, [2.0] * 12, {0: 0.5, 12: 0.25}))
    (pt,) = summary(rows)
    assert (pt["untrained"], pt["final"], pt["final_min"], pt["final_max"]) == (0.5, 0.5, 0.25, 0.75)
    assert pt["final_std"] == pytest.approx(((0.25 ** 2 + 0.25 ** 2) / 1) ** 0.5)
    assert pt["loss_last10"] == pytest.approx((5.5 + 2.0) / 2)  # seed 1: mean of 10..1
    assert learning_rates("pt=0.01,default=0.3", ["pt", "dpt"]) == {"pt": 0.01, "dpt": 0.3}
    with pytest.raises(SystemExit, match="dpt"):
        learning_rates("pt=0.01", ["pt", "dpt"])
