"""`lrpt predict RUN_DIR RUN_DIR...` (trainer/cli/predict.py, trainer/train/prompt_mix.py): several runs of one
backbone answer every input in one pass over it.

The reference for every prediction is each run predicting alone through the one-run path (`load_run` +
`rank_classify` / `generate`, which for LLaMA takes the shared prefix), never the code under test; the scores are
checked against `PromptedModel.label_log_likelihood` of each run alone, one (example, candidate) at a time
(no batching, no padding). The runs have prompts of different lengths (DPT c = 8, LAMP c = 8 pooled by 3 to 3 rows,
prompt tuning c = 5) and the inputs different lengths, so rows of one batch are padded differently.
Tiny random backbones are weak judges of answers: on RTE every tiny run answers "entailment", and tiny T5 generates
one repeated byte that decodes to (almost) nothing. So the weight is on the scores (candidates' log-likelihoods,
every generation step's logits) and on ReCoRD with tiny LLaMA, where the runs do disagree.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lrpt.eval.data import format_rows, read_jsonl
from lrpt.eval.tasks import get_task
from lrpt.trainer.train import prompt_mix
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.train.data import Encoder, collate
from lrpt.trainer.train.loop import train
from lrpt.trainer.model.prompted import PromptedModel
from lrpt.trainer.train.reopen import load_run

RUNS = [("a-dpt", "dpt", 8, {}), ("b-lamp", "lamp", 8, {"rank": 4, "pool": 3}), ("c-pt", "pt", 5, {})]
NAMES = [name for name, *_ in RUNS]
WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing loudly near an old stone wall".split()


@pytest.fixture(scope="module")
def trained(backbone_dirs, memorise_dir, tmp_path_factory):
    """(arch, task) -> the three runs' directories, trained once for the module (RTE: the rows to memorise;
    ReCoRD: the bundled demo data)."""
    cache: dict[tuple[str, str], list[str]] = {}

    def runs(arch: str, task: str = "rte") -> list[str]:
        if (arch, task) not in cache:
            root = tmp_path_factory.mktemp(f"runs-{arch}-{task}")
            data = {"data_dir": str(memorise_dir)} if task == "rte" else {"max_eval_samples": 2}
            for name, method, length, options in RUNS:
                train(RunConfig(model=backbone_dirs[arch], task=task, output_dir=str(root / name), method=method,
                                prompt_length=length, max_steps=2, per_device_train_batch_size=4, progress=False,
                                decoding="rank", **data, **options))
            cache[arch, task] = [str(root / name) for name in NAMES]
        return cache[arch, task]
    return runs


def write_rows(path: Path, runs: list[str | None] | None = None, n: int = 7) -> Path:
    """n RTE rows of mixed lengths (1 to 17 premise words); runs[i], where given, as row i's "run"."""
    rows = []
    for i in range(n):
        row = {"premise": " ".join(WORDS[:1 + (5 * i) % 17]) + ".", "hypothesis": " ".join(WORDS[i:i + 2]) + ".",
               "idx": 100 + i}
        if runs is not None and runs[i] is not None:
            row["run"] = runs[i]
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def predict_lines(runs: list[str], source: Path, out: Path, *flags: str) -> list[dict]:
    assert main(["predict", *runs, "--input", str(source), "--output", str(out), *flags]) == 0
    assert not list(out.parent.glob(".*.tmp"))  # written aside, then renamed into place
    return [json.loads(line) for line in out.read_text().splitlines()]


def alone_lines(runs: list[str], source: Path, tmp_path: Path, *flags: str) -> dict[str, list[dict]]:
    """Each run's lines predicted alone (the one-run path): the reference."""
    return {Path(run).name: predict_lines([run], source, tmp_path / f"alone-{Path(run).name}.jsonl", *flags)
            for run in runs}


def assert_equal_to_alone(lines: list[dict], alone: dict[str, list[dict]], wanted: list[list[str]]) -> None:
    """`lines` are one per (example i, run in wanted[i]), in that order, each equal to that run's line alone."""
    expected = [{**alone[name][i], "run": name} for i in range(len(wanted)) for name in wanted[i]]
    assert [(line["index"], line["run"]) for line in lines] == [(e["index"], e["run"]) for e in expected]
    assert lines == expected


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_rank_predictions_and_scores_equal_each_run_alone(arch, trained, tmp_path):
    runs = trained(arch)
    source = write_rows(tmp_path / "in.jsonl")  # 7 examples x 2 candidates: 14 pairs, batches of 3 (5 forwards)
    lines = predict_lines(runs, source, tmp_path / "out.jsonl", "--batch_size", "3")
    assert_equal_to_alone(lines, alone_lines(runs, source, tmp_path, "--batch_size", "3"), [NAMES] * 7)
    assert all(line["prediction"] in ("entailment", "not_entailment") and line["valid"] for line in lines)

    # the scores themselves, against each run alone scoring one (example, candidate) at a time, unpadded
    models = [load_run(run)[2] for run in runs]  # the standard path (no shared prefix), backbone per run
    cfg, backbone, _ = load_run(runs[0])
    rows = format_rows(get_task("rte"), read_jsonl(source))
    encoder = Encoder(backbone.tokenizer, backbone.is_encoder_decoder, cfg.max_source_length, cfg.max_target_length)
    with torch.no_grad():
        prompts = [model.prompt() for model in models]
    assert [p.shape[0] for p in prompts] == [8, 3, 5]
    got = prompt_mix.score_candidates(backbone, prompts, rows, [[0, 1, 2]] * len(rows), encoder, batch_size=3)
    assert sorted(got) == [(i, k) for i in range(len(rows)) for k in range(3)]
    for (i, k), scores in got.items():
        expected = []
        for candidate in rows[i]["candidates"]:
            pair = encoder.pair(rows[i]["source"], candidate)
            ids, labels = torch.tensor([pair["input_ids"]]), torch.tensor([pair["labels"]])
            with torch.no_grad():
                expected.append(models[k].label_log_likelihood(ids, torch.ones_like(ids), labels).item())
        torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_generations_equal_each_run_alone(arch, trained, tmp_path):
    """Mixed input lengths and prompt lengths: LLaMA rows are left-padded, (pads, P_k, text), T5 rows right-padded."""
    runs = trained(arch)
    source = write_rows(tmp_path / "in.jsonl")
    flags = ("--decoding", "generate", "--batch_size", "3")
    lines = predict_lines(runs, source, tmp_path / "out.jsonl", *flags)
    alone = alone_lines(runs, source, tmp_path, *flags)
    assert_equal_to_alone(lines, alone, [NAMES] * 7)
    if arch == "llama":  # tiny T5 repeats one byte, mostly not text: its tokens are compared below
        assert len({line["prediction"] for line in lines}) > 1  # not one answer for every row and run


def until_eos(tokens: list[int], eos: int, pad: int) -> list[int]:
    """New tokens up to the first eos; a row that stopped before the batch did has pads after it."""
    tokens = tokens[:tokens.index(eos) + 1] if eos in tokens else tokens
    while tokens and tokens[-1] == pad and len(tokens) > 1:
        tokens = tokens[:-1]
    return tokens


def recording(model) -> list[torch.Tensor]:
    """`model.generate` returns its sequences as before, and keeps each call's scores ([rows, steps, vocab])."""
    calls, generate = [], model.generate

    def recorded(*args, **kwargs):
        out = generate(*args, **kwargs, output_scores=True, return_dict_in_generate=True)
        calls.append(torch.stack(out.scores, dim=1))
        return out.sequences
    model.generate = recorded
    return calls


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_generation_scores_equal_each_run_alone_unpadded(arch, trained, tmp_path):
    """Every step's scores, not only the answer (tiny T5 repeats one byte, whatever its prompt): 7 examples of
    mixed lengths x 3 runs in one `generate` call, against each run's `PromptedModel.generate` (standard path) on
    each example alone, with no padding at all."""
    runs = trained(arch)
    models = [load_run(run)[2] for run in runs]
    cfg, backbone, _ = load_run(runs[0])
    tok = backbone.tokenizer
    rows = format_rows(get_task("rte"), read_jsonl(write_rows(tmp_path / "in.jsonl")))
    encoder = Encoder(tok, backbone.is_encoder_decoder, cfg.max_source_length, cfg.max_target_length)
    sources = [{"input_ids": encoder.source(rows[i]["source"]), "labels": []} for i in range(len(rows))]
    assert len({len(s["input_ids"]) for s in sources}) > 3  # mixed lengths: padding happens
    with torch.no_grad():
        prompts = [model.prompt() for model in models]
    batch = collate(sources, tok.pad_token_id, left_pad=not backbone.is_encoder_decoder)
    mixed = recording(backbone.model)
    out = prompt_mix.generate_rows(backbone, prompts, [batch] * 3, cfg.max_target_length)
    (scores,) = mixed
    assert len(scores) == len(out) == 3 * len(sources)
    for k, model in enumerate(models):
        alone = recording(model.backbone)
        for i, source in enumerate(sources):
            ids = torch.tensor([source["input_ids"]])
            tokens = model.generate(ids, torch.ones_like(ids), max_new_tokens=cfg.max_target_length,
                                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0].tolist()
            row = k * len(sources) + i
            assert out[row].tolist()[:len(tokens)] == tokens  # then pads, where the batch went on
            steps = alone[-1].shape[1]
            # logits up to ~10; the one-run path itself on a padded batch differs from this by <= 4e-5 (measured)
            torch.testing.assert_close(scores[row, :steps], alone[-1][0], rtol=1e-5, atol=1e-4)
    first = scores[:, 0].nan_to_num(neginf=0)
    assert (first[0] - first[len(sources)]).abs().max() > 1e-3  # the prompt changes the scores


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_generation_rows_are_laid_out_as_each_run_alone(arch, backbone_dirs):
    """The layout itself, built here row by row: T5 [P_k, text, pads]; decoder-only (pads, P_k, text), every pad
    first. (With this transformers, LLaMA derives positions from the mask, so (P_k, pads, text) would generate
    the same; the layout is what `PromptedModel.generate` gives, and what a model taking positions otherwise needs.)"""
    backbone = load_backbone(backbone_dirs[arch])
    embed, enc_dec = backbone.model.get_input_embeddings(), backbone.is_encoder_decoder
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randn(c, backbone.embed_dim, generator=g) for c in (8, 3, 5)]
    texts = [[[5 + i] * n for i, n in enumerate(lengths)] for lengths in ([4, 9], [2], [7, 1, 3])]
    batches = [collate([{"input_ids": t, "labels": []} for t in run], 0, left_pad=not enc_dec) for run in texts]
    embeds, mask = prompt_mix.generation_rows(prompts, batches, embed, enc_dec)
    width = max(len(p) + len(t) for p, run in zip(prompts, texts) for t in run)
    assert embeds.shape == (6, width, backbone.embed_dim) and mask.shape == (6, width)
    rows = [(p, t) for p, run in zip(prompts, texts) for t in run]
    for row, (prompt, text) in enumerate(rows):
        content = torch.cat([prompt, embed(torch.tensor(text))])
        pads = width - len(content)
        at = slice(pads, width) if not enc_dec else slice(0, len(content))
        ones, zeros = [1] * len(content), [0] * pads
        assert mask[row].tolist() == (ones + zeros if enc_dec else zeros + ones)
        torch.testing.assert_close(embeds[row, at], content, rtol=0, atol=0)


class Counting:
    """Wraps `load_backbone`: counts loads, forwards of the backbone module and its `generate` calls."""

    def __init__(self):
        self.loads = self.forwards = self.generates = 0

    def load(self, *args, **kwargs):
        backbone = load_backbone(*args, **kwargs)
        self.loads += 1
        backbone.model.register_forward_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))
        generate = backbone.model.generate

        def counted(*a, **k):
            self.generates += 1
            return generate(*a, **k)
        backbone.model.generate = counted
        return backbone


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_three_runs_take_one_pass_as_one_run_does(arch, trained, tmp_path, monkeypatch):
    runs = trained(arch)
    source = write_rows(tmp_path / "in.jsonl")
    counts = {}
    for label, chosen in (("one", runs[:1]), ("three", runs)):
        for decoding in ("rank", "generate"):
            counter = Counting()
            monkeypatch.setattr("lrpt.trainer.backbone.load.load_backbone", counter.load)  # every run's load
            predict_lines(chosen, source, tmp_path / f"{label}-{decoding}.jsonl", "--decoding", decoding,
                          "--batch_size", "3")
            counts[label, decoding] = counter
    for label in ("one", "three"):
        assert counts[label, "rank"].loads == counts[label, "generate"].loads == 1
        assert counts[label, "rank"].forwards == 5  # ceil(14 (example, candidate) pairs / 3)
        assert counts[label, "generate"].generates == 3  # ceil(7 examples / 3)
    assert counts["three", "rank"].forwards == counts["one", "rank"].forwards


def test_rows_naming_a_run_get_only_its_answer(trained, tmp_path):
    runs = trained("t5")
    named = ["b-lamp", None, "c-pt", "a-dpt", None, "b-lamp", "c-pt"]
    source = write_rows(tmp_path / "in.jsonl", named)
    for flags in (("--batch_size", "3"), ("--decoding", "generate", "--batch_size", "2")):
        lines = predict_lines(runs, source, tmp_path / "out.jsonl", *flags)
        plain = write_rows(tmp_path / "plain.jsonl")  # without names: a run alone refuses rows naming another
        alone = alone_lines(runs, plain, tmp_path, *flags)
        assert_equal_to_alone(lines, alone, [NAMES if name is None else [name] for name in named])


def test_record_runs_that_disagree_each_answer_as_alone(trained, tmp_path):
    """ReCoRD (six candidates per query, several queries per row) on tiny LLaMA, where the three runs do pick
    different answers: a run answering with another run's prompt, or a named row answered by the wrong run, shows
    here (on RTE every tiny run answers "entailment"). A row naming its run names it for each of its queries."""
    from lrpt.eval.data import DEMO_DIR

    runs = trained("llama", "record")
    rows = [json.loads(line) for line in (DEMO_DIR / "ReCoRD" / "val.jsonl").read_text().splitlines()[:6]]
    queries = [len(get_task("record").examples(dict(row), False)) for row in rows]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    alone = alone_lines(runs, source, tmp_path, "--batch_size", "5")
    assert any(len({alone[name][i]["prediction"] for name in NAMES}) > 1 for i in range(sum(queries)))
    lines = predict_lines(runs, source, tmp_path / "out.jsonl", "--batch_size", "5")
    assert_equal_to_alone(lines, alone, [NAMES] * sum(queries))

    named = ["b-lamp", None, "c-pt", "a-dpt", None, "b-lamp"]
    source.write_text("".join(json.dumps({**r, **({"run": n} if n else {})}) + "\n" for r, n in zip(rows, named)))
    lines = predict_lines(runs, source, tmp_path / "out.jsonl", "--batch_size", "5")
    wanted = [NAMES if name is None else [name] for name, n in zip(named, queries) for _ in range(n)]
    assert_equal_to_alone(lines, alone, wanted)


def refused(runs: list[str], source: Path, tmp_path: Path, capsys, *flags: str) -> str:
    """The one-line error of a refusal that comes before the backbone loads."""
    capsys.readouterr()
    assert main(["predict", *runs, "--input", str(source), "--output", str(tmp_path / "out.jsonl"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "out.jsonl").exists()
    return err


def edited_copy(run: str, where: Path, **changes) -> str:
    """A copy of a finished run with settings of its config.yaml changed."""
    shutil.copytree(run, where)
    config = yaml.safe_load((where / "config.yaml").read_text())
    (where / "config.yaml").write_text(yaml.safe_dump({**config, **changes}))
    return str(where)


def test_refusals_come_before_the_backbone_loads(trained, tmp_path, capsys, monkeypatch):
    runs = trained("t5")

    def no_load(*args, **kwargs):
        raise AssertionError("the backbone loaded before the refusal")
    monkeypatch.setattr("lrpt.trainer.backbone.load.load_backbone", no_load)

    source = write_rows(tmp_path / "in.jsonl", [None, None, "d-nope", None, None, None, None])
    err = refused(runs, source, tmp_path, capsys)
    assert f"{source}:3: " in err and '"d-nope"' in err and "a-dpt, b-lamp, c-pt" in err, err

    source = write_rows(tmp_path / "in.jsonl")
    for setting, value in (("task", "cb"), ("max_source_length", 128), ("precision", "bf16"), ("model", "tiny-t5"),
                           ("load_in_8bit", True), ("load_in_4bit", True)):
        other = edited_copy(runs[2], tmp_path / f"d-{setting}", **{setting: value})
        err = refused([runs[0], other], source, tmp_path, capsys)
        assert f"{runs[0]} has --{setting} " in err and f" and {other} {value}" in err, err
        assert f"predict with runs of one --{setting}" in err, err

    other = edited_copy(runs[2], tmp_path / "d-decoding", decoding="generate")
    err = refused([runs[0], other], source, tmp_path, capsys)
    assert "--decoding rank and" in err and "give --decoding" in err, err

    twin = tmp_path / "elsewhere" / "a-dpt"
    shutil.copytree(runs[0], twin)
    err = refused([runs[0], runs[1], str(twin)], source, tmp_path, capsys)
    assert f"{runs[0]} and {twin} are both named 'a-dpt'" in err, err

    unfinished = tmp_path / "d-unfinished"
    shutil.copytree(runs[2], unfinished)
    (unfinished / "prompt.safetensors").unlink()
    err = refused([runs[0], str(unfinished)], source, tmp_path, capsys)
    assert "has not finished" in err, err


def test_runs_differing_in_decoding_run_with_one_given(trained, tmp_path):
    """--decoding overrides every run's, so runs that differ in it share one pass, each equal to its run alone."""
    runs = trained("t5")
    other = edited_copy(runs[2], tmp_path / "c-pt", decoding="generate")
    source = write_rows(tmp_path / "in.jsonl")
    lines = predict_lines([runs[0], other], source, tmp_path / "out.jsonl", "--decoding", "rank")
    alone = alone_lines([runs[0], runs[2]], source, tmp_path, "--decoding", "rank")
    assert_equal_to_alone(lines, alone, [["a-dpt", "c-pt"]] * 7)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_predict_on_a_quantized_run_uses_the_backbone_it_trained_on(bits, tiny_llama_dir, memorise_dir, tmp_path):
    """`lrpt predict` loads the run's backbone as training did, quantized: its predictions are the run's own
    evaluation's (eval_predictions.jsonl, the same rows), and the scores behind them are those of the trained prompt
    on a backbone quantized here from the run's settings, not those of the unquantized backbone (which differ)."""
    from lrpt.trainer.backbone import quant

    run = tmp_path / "run"
    cfg = RunConfig(model=tiny_llama_dir, task="rte", data_dir=str(memorise_dir), output_dir=str(run), method="dpt",
                    prompt_length=4, max_steps=2, per_device_train_batch_size=4, progress=False, decoding="rank",
                    **{f"load_in_{bits}": True})
    train(cfg)
    lines = predict_lines([str(run)], memorise_dir / "RTE" / "val.jsonl", tmp_path / "out.jsonl")
    own = [json.loads(line) for line in (run / "eval_predictions.jsonl").read_text().splitlines()]
    assert [line["prediction"] for line in lines] == [line["prediction"] for line in own]

    _, backbone, model = load_run(run)
    assert quant.quantized_layers(backbone.model)  # predict's own backbone
    rows = format_rows(get_task("rte"), read_jsonl(memorise_dir / "RTE" / "val.jsonl"))
    encoder = Encoder(backbone.tokenizer, False, cfg.max_source_length, cfg.max_target_length)
    pairs = [encoder.pair(rows[i]["source"], c) for i in range(2) for c in rows[i]["candidates"]]

    def scores(prompted) -> torch.Tensor:
        with torch.no_grad():
            return torch.tensor([prompted.label_log_likelihood(torch.tensor([p["input_ids"]]),
                                                               torch.ones(1, len(p["input_ids"]), dtype=torch.long),
                                                               torch.tensor([p["labels"]])).item() for p in pairs])

    def on(reference_backbone) -> torch.Tensor:
        reference_backbone.model.eval()
        return scores(PromptedModel(reference_backbone.model, model.prompt, False))

    quantized = on(load_backbone(tiny_llama_dir, quantization=quant.bnb_config(cfg)))
    torch.testing.assert_close(scores(model), quantized, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(quantized, on(load_backbone(tiny_llama_dir)), rtol=1e-4, atol=1e-4)
