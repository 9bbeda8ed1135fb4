"""Report fields are present and consistent; report.json's one writer and one reader (byte-identical round trip, old
reports, refusals); the FLOPs formula against a hand count; lrpt bench."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import replace

import pytest
import torch

from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.config.ds_config import shipped
from lrpt.trainer.measure.flops import matmul_params, step_flops
from lrpt.trainer.train.loop import train
from lrpt.trainer.backbone.presets import build_preset
from lrpt.trainer.rundir.report import (Fused, Memory, RankThroughput, Report, ReportError, Selection, StepTimes,
                                        Throughput, TrainSummary, format_table)


def test_report_fields_are_consistent(tiny_t5_dir, memorise_dir, tmp_path):
    report = train(RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(tmp_path),
                             method="lopt1",
                             prompt_length=8, max_steps=12, per_device_train_batch_size=4, progress=False)).report
    n = report.trainable_params
    tensors = 2  # U, V
    assert report.optimizer_state_bytes == 2 * 4 * n + 4 * tensors  # Adam m, v (fp32) + step counters
    thr, rank0 = report.throughput, report.throughput.per_rank[0]
    assert rank0.steps_measured == 12 - rank0.warmup_steps
    # tokens/s = tokens / time: the prompt and input parts add up, and samples/s matches the batch
    assert thr.tokens_per_s == pytest.approx(thr.prompt_tokens_per_s + thr.input_tokens_per_s)
    seconds = rank0.steps_measured * rank0.step_time_s.mean
    assert thr.samples_per_s == pytest.approx(4 * rank0.steps_measured / seconds, rel=1e-6)
    assert thr.prompt_tokens_per_s == pytest.approx(4 * 8 * rank0.steps_measured / seconds, rel=1e-6)
    assert thr.step_time_s.p50 <= thr.step_time_s.p95
    assert thr.model_flops_per_s > 0 and thr.mfu is None  # no known peak on CPU
    mem = report.memory
    assert mem.backbone_bytes_held[0] == mem.backbone_bytes_total > 0  # one rank holds it all
    assert "RSS" in mem.measured_by and mem.peak_bytes[0] >= mem.load_peak_bytes[0]


# report.json's objects and their keys in order, as lrpt wrote them before the report was typed (build_report's
# dict, the fused group appended; the optimizer's groups since per-group learning rates): the format that run
# directories already hold
LAYOUT = {
    "": ["method", "trainable_params", "kept_params", "prompt_length", "prompt_output_length", "shared_prefix",
         "optimizer_state_bytes", "optimizer_state_bytes_per_rank", "optimizer_groups", "metrics", "metrics_untrained",
         "data", "selected_step", "selection", "train", "throughput", "memory", "world_size", "zero_stage",
         "output_dir", "versions", "config", "deepspeed_config"],
    "data": ["train_examples", "eval_examples", "dev_examples", "train_batch_size"],
    "optimizer_groups.0": ["name", "params", "learning_rate", "weight_decay"],
    "selection": ["protocol", "step", "optimistic"],
    "train": ["steps", "epochs", "loss_first", "loss_last", "loss_curve", "eval_history", "diagnostics"],
    "throughput": ["per_rank", "samples_per_s", "tokens_per_s", "input_tokens_per_s", "prompt_tokens_per_s",
                   "model_flops_per_s", "step_time_s", "mfu"],
    "throughput.step_time_s": ["mean", "p50", "p95"],
    "throughput.per_rank.0": ["steps_measured", "warmup_steps", "step_time_s", "samples_per_s", "tokens_per_s",
                              "input_tokens_per_s", "prompt_tokens_per_s", "model_flops_per_s"],
    "memory": ["peak_bytes", "measured_by", "load_peak_bytes", "load_peak_measured_by", "backbone_bytes_held",
               "backbone_bytes_total", "backbone_bytes_held_all", "backbone_bytes_unquantized", "quant_state_bytes"],
}


def keys_at(report: dict, path: str) -> list[str]:
    for step in filter(None, path.split(".")):
        report = report[int(step)] if step.isdigit() else report[step]
    return list(report)


def test_a_written_report_reads_back_and_writes_the_same_bytes(tiny_t5_dir, memorise_dir, tmp_path):
    """Reference: report.json as a real run wrote it, parsed by json alone, and LAYOUT, the format as it was.
    Read into the typed Report and written again, it is that file byte for byte (keys, nesting, order, nulls) and
    json.dumps of its dict with the writer's formatting. The run fills the optional sections: untrained metrics,
    selection on val with its history, data."""
    run = tmp_path / "run"
    train(RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(run), method="dpt",
                    prompt_length=4, max_steps=6, eval_steps=3, selection="paper-val", logging_steps=3,
                    per_device_train_batch_size=2, decoding="rank", progress=False, report_to="none"))
    written = (run / "report.json").read_text()
    original = json.loads(written)
    assert {path: keys_at(original, path) for path in LAYOUT} == LAYOUT
    assert original["throughput"]["mfu"] is None and original["metrics_untrained"] is not None  # nulls stay
    report = Report.read(run)
    assert isinstance(report.train, TrainSummary) and isinstance(report.throughput, Throughput)
    assert isinstance(report.throughput.per_rank[0], RankThroughput) and isinstance(report.memory, Memory)
    assert report.selection == Selection(protocol="paper-val", step=original["selection"]["step"], optimistic=True)
    assert report.throughput.step_time_s == StepTimes(**original["throughput"]["step_time_s"])
    assert report.train.loss_curve == original["train"]["loss_curve"] and report.metrics == original["metrics"]
    assert report.data.train_examples == original["data"]["train_examples"] and report.fused is None
    again = report.write(tmp_path)
    assert again.read_text() == written == json.dumps(original, indent=1)
    # a fused run's group is the file's last key, "with" the others' names
    fused = replace(report, fused=Fused(with_runs=["rte-pt-seed0"], runs=2))
    assert list(fused.to_dict().items())[-1] == ("fused", {"with": ["rte-pt-seed0"], "runs": 2})
    assert Report.from_dict(json.loads(fused.to_json())) == fused


# report.json as lrpt's first version wrote it: no shared_prefix, metrics_untrained, data, selected_step, selection,
# diagnostics, model FLOP/s, MFU, load peaks or backbone bytes, nor a fused group
OLDEST = {
    "method": "pt", "trainable_params": 76_800, "kept_params": 76_800, "prompt_length": 100,
    "prompt_output_length": 100, "optimizer_state_bytes": 614_408, "optimizer_state_bytes_per_rank": [614_408],
    "metrics": {"accuracy": 0.625, "unparsable": 0, "examples": 8},
    "train": {"steps": 4, "epochs": 1.0, "loss_first": 2.5, "loss_last": 1.5, "loss_curve": [2.5, 2.0, 1.75, 1.5],
              "eval_history": []},
    "throughput": {"per_rank": [{"steps_measured": 2, "warmup_steps": 2,
                                 "step_time_s": {"mean": 0.5, "p50": 0.5, "p95": 0.6}, "samples_per_s": 8.0,
                                 "tokens_per_s": 900.0, "input_tokens_per_s": 100.0, "prompt_tokens_per_s": 800.0}],
                   "samples_per_s": 8.0, "tokens_per_s": 900.0, "input_tokens_per_s": 100.0,
                   "prompt_tokens_per_s": 800.0, "step_time_s": {"mean": 0.5, "p50": 0.5, "p95": 0.6}},
    "memory": {"peak_bytes": [2_000_000], "measured_by": "peak RSS of the process (getrusage ru_maxrss; CPU run)"},
    "world_size": 1, "zero_stage": 0, "output_dir": "runs/old",
    "versions": {"torch": "2.4.0", "transformers": "4.44.0", "deepspeed": "0.15.0"},
    "config": {"model": "t5-small", "task": "rte", "method": "pt", "seed": 0}, "deepspeed_config": {},
}


def test_an_old_report_reads_with_defaults_and_lrpt_table_aggregates_it(tmp_path, capsys):
    """Reference: OLDEST above, written by hand. The reader fills in what it lacks; `lrpt table` reads it as
    before (the score is its accuracy, x100), and so does the end-of-run table."""
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(OLDEST, indent=1))
    report = Report.read(run / "report.json")
    assert (report.shared_prefix, report.metrics_untrained, report.data, report.selected_step, report.selection,
            report.fused) == (False, None, None, None, None, None)
    assert report.selection_protocol == "final" and report.train.diagnostics == []
    assert (report.throughput.model_flops_per_s, report.throughput.mfu) == (None, None)
    assert report.throughput.per_rank[0].model_flops_per_s is None and report.throughput.tokens_per_s == 900.0
    assert report.memory.load_peak_bytes == [] and report.memory.backbone_bytes_total is None
    assert "eval accuracy" in format_table(report) and "FLOP/s" not in format_table(report)
    assert main(["table", str(tmp_path / "runs")]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "| Method | Params | RTE (acc) | Avg |" and rows[2] == "| pt | 76,800 | 62.5 | 62.5 |"


@pytest.mark.parametrize("break_it, said", [
    (lambda r: r.pop("metrics"), "no 'metrics' field"),
    (lambda r: r["train"].pop("steps"), "no 'train.steps' field"),
    (lambda r: r["throughput"]["per_rank"][0].pop("warmup_steps"), "no 'throughput.per_rank[0].warmup_steps' field"),
    (lambda r: r.update(memory=[1]), "'memory' is not a JSON object (an array)"),
    (lambda r: r.update(train=None), "'train' is null"),
])
def test_a_report_lacking_a_required_key_is_refused_in_one_line(tmp_path, capsys, break_it, said):
    """The reader names the file and what it lacks; `lrpt table` says that in one line and exits 2."""
    broken = json.loads(json.dumps(OLDEST))
    break_it(broken)
    path = tmp_path / "run" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(broken))
    with pytest.raises(ReportError) as refused:
        Report.read(path.parent)
    assert str(refused.value) == f"{path}: {said}"
    assert main(["table", str(path.parent)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and said in err


def test_a_report_json_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("[1, 2]")
    with pytest.raises(ReportError, match=r"report.json: the report is not a JSON object \(an array\)$"):
        Report.read(path)
    path.write_text("{")
    with pytest.raises(ReportError, match="report.json: not valid JSON"):
        Report.read(path)


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
    assert frozen.metrics_untrained is None
    assert learns.metrics_untrained == frozen.metrics
    table = format_table(learns)
    assert f"{learns.metrics_untrained['accuracy']:.4f} -> {learns.metrics['accuracy']:.4f}" in table


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
