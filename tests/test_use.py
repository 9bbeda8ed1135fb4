"""Using what was trained: export to peft, predict on new inputs, the prompt's spectrum."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.train.loop import train
from lrpt.trainer.train.reopen import load_run
from lrpt.trainer.cli.spectrum import spectrum

EXPORT_CASES = [("pt", {}), ("dpt", {}), ("lamp", {"rank": 4, "pool": 3}), ("lopt1", {"rank": 3}),
                ("lopt2", {"rank": 3}), ("residual", {"bottleneck": 16})]


@pytest.mark.parametrize("arch", ["t5", "llama"])
@pytest.mark.parametrize("method, options", EXPORT_CASES)
def test_export_to_peft_gives_the_same_logits(method, options, arch, backbone_dirs, memorise_dir, tmp_path):
    from peft import PeftModel

    model_dir = backbone_dirs[arch]
    run = tmp_path / "run"
    trained = train(RunConfig(model=model_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(run),
                              method=method,
                              prompt_length=8, max_steps=3, per_device_train_batch_size=4, progress=False, **options))
    assert main(["export", str(run), "--to", "peft", str(tmp_path / "adapter")]) == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["num_virtual_tokens"] == trained.model.prompt.output_length  # LAMP: pooled length
    assert config["num_transformer_submodules"] == 1

    auto = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM
    peft_model = PeftModel.from_pretrained(auto.from_pretrained(model_dir), str(tmp_path / "adapter")).eval()
    _, _, ours = load_run(run)
    ids = torch.randint(3, 250, (2, 7))
    mask = torch.ones_like(ids)
    labels = torch.randint(3, 250, (2, 7 if arch == "llama" else 3))
    with torch.no_grad():
        expected = ours(ids, mask, labels=labels)
        got = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)


def test_predict_writes_one_line_per_example_in_order(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(run), method="dpt",
                    prompt_length=8, max_steps=2, per_device_train_batch_size=4, progress=False, decoding="rank"))
    rows = [{"premise": f"Premise number {i}.", "hypothesis": f"Hypothesis {i}.", "idx": 100 + i} for i in range(7)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["predict", str(run), "--input", str(source), "--output", str(tmp_path / "out.jsonl"),
                 "--batch_size", "3"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(7))
    assert [line["group"] for line in lines] == [str(100 + i) for i in range(7)]
    assert all(line["prediction"] in ("entailment", "not_entailment") for line in lines)  # rank mode
    assert not list(tmp_path.glob(".*.tmp"))  # written aside, then renamed into place

    # the input named as the output (also through another spelling of the path) is refused, untouched
    before = source.read_text()
    for output in (source, tmp_path / "." / "in.jsonl"):
        assert main(["predict", str(run), "--input", str(source), "--output", str(output)]) == 2
    assert source.read_text() == before

    # a malformed input row is one line at its file:line, before the backbone loads
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"premise": "only a premise"}) + "\n")
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(bad), "--output", str(tmp_path / "bad-out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lrpt predict: error: {bad}:2: rte: row lacks field(s) ['hypothesis']"), err
    assert err.count("\n") == 1 and "Loading weights" not in err


@pytest.mark.parametrize("r", [1, 3, 7])
def test_spectrum_of_a_known_rank_r_prompt(r):
    g = torch.Generator().manual_seed(r)
    prompt = torch.randn(20, r, generator=g) @ torch.randn(r, 64, generator=g)
    result = spectrum(prompt)
    assert result["numerical_rank"] == r
    assert result["energy"][r - 1] == pytest.approx(1.0, abs=1e-9)
    assert result["rank_for_99"] <= r and 1 <= result["effective_rank"] <= r + 1e-3  # float32 residue
    s = torch.linalg.svdvals(prompt.double())
    assert result["singular_values"] == pytest.approx(s.tolist())


def test_rank_command_with_dpt_probe(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    run = tmp_path / "probe"
    result = train(RunConfig(model=tiny_t5_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(run),
                             method="dpt",
                             rank=6, rank_probe=True, prompt_length=8, max_steps=6, logging_steps=2,
                             per_device_train_batch_size=4, progress=False))
    prompt = result.model.prompt
    assert result.report.trainable_params == 8 * 6 + 6 + 6 * 64  # A, Σ, B
    history = result.report.train.diagnostics
    assert [h["step"] for h in history] == [2, 4, 6]
    assert history[-1]["probe_positive_rank"] == int((prompt.sigma > 0).sum())
    assert main(["rank", str(run), "--output", str(tmp_path / "rank.png")]) == 0
    numbers = json.loads((tmp_path / "rank.json").read_text())
    (name,) = numbers["runs"]
    assert numbers["runs"][name]["numerical_rank"] <= 6  # P = A·ReLU(Σ)·B has rank <= b
    assert numbers["probes"][name] == history
    assert (tmp_path / "rank.png").stat().st_size > 10_000
    assert "effective" in capsys.readouterr().out


def test_predict_answers_what_the_models_own_logits_rank_first(tiny_t5_dir, tmp_path):
    """Rank mode against the model's logits, one example and one candidate at a time (no batching, no padding):
    the answer is the candidate whose tokens have the highest summed log-probability. ReCoRD: many candidates
    (the passage's entities) per query."""
    from lrpt.eval.data import DEMO_DIR
    from lrpt.eval.tasks import get_task
    from lrpt.trainer.train.data import Encoder

    run = tmp_path / "run"
    train(RunConfig(model=tiny_t5_dir, task="record", output_dir=str(run), method="dpt", prompt_length=8,
                    max_steps=2, per_device_train_batch_size=4, progress=False, decoding="rank", max_eval_samples=2,
                    seed=4))
    source = tmp_path / "in.jsonl"
    source.write_text("".join((DEMO_DIR / "ReCoRD" / "val.jsonl").read_text().splitlines(keepends=True)[:6]))
    assert main(["predict", str(run), "--input", str(source), "--output", str(tmp_path / "out.jsonl"),
                 "--batch_size", "5"]) == 0
    got = [json.loads(line)["prediction"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]

    cfg, backbone, model = load_run(run)
    task = get_task("record")
    encoder = Encoder(backbone.tokenizer, True, cfg.max_source_length, cfg.max_target_length)
    expected, firsts = [], []
    for line in source.read_text().splitlines():
        for example in task.examples(json.loads(line), train=False):
            scores = []
            for candidate in example["candidates"]:
                pair = encoder.pair(example["source"], candidate)
                ids, labels = torch.tensor([pair["input_ids"]]), torch.tensor([pair["labels"]])
                with torch.no_grad():
                    logits = model(ids, torch.ones_like(ids), labels=labels).logits
                scores.append(torch.log_softmax(logits.double(), -1)[0].gather(-1, labels[0, :, None]).sum().item())
            expected.append(example["candidates"][max(range(len(scores)), key=scores.__getitem__)])
            firsts.append(example["candidates"][0])
    assert got == expected
    assert expected != firsts, expected  # "always the first candidate" would fail here
