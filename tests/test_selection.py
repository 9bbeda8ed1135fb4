"""Selection protocols: which prompt a run reports (final, best on a carved dev split, best on val as DPT)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lrpt.eval.aggregate import collect, table
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.errors import LrptError
from lrpt.trainer.rundir.report import Report, Selection
from lrpt.trainer.train.loop import train

METRIC_KEYS = ("accuracy", "unparsable", "examples")


def run(model_dir, data_dir, out, **kw) -> Report:
    base = dict(model=model_dir, task="rte", data_dir=str(data_dir), output_dir=str(out), method="pt", prompt_length=4,
                per_device_train_batch_size=2, max_steps=6, save_steps=1, save_total_limit=10, eval_steps=1,
                learning_rate=3.0, decoding="rank", progress=False, seed=7)
    return train(RunConfig(**{**base, **kw})).report


@pytest.mark.parametrize("protocol, split", [("paper-val", "val"), ("dev", "dev")])
def test_the_reported_prompt_is_the_best_one_on_the_selection_split(protocol, split, tiny_t5_dir, tmp_path):
    """The history's scores on the split pick the step (first best); the report's metrics are that step's, and
    best/ holds that step's checkpointed prompt, not the last one."""
    from conftest import MEMORISE, write_task

    data = write_task(tmp_path / "data", "RTE", {"train": MEMORISE * 3, "val": MEMORISE})
    extra = {"dev_size": 4} if protocol == "dev" else {}
    report = run(tiny_t5_dir, data, tmp_path / "run", selection=protocol, **extra)
    history = [h for h in report.train.eval_history if h["split"] == split]
    assert [h["step"] for h in history] == list(range(1, 7))  # every step (--eval_steps 1), the last included
    scores = [h["score"] for h in history]
    best = history[scores.index(max(scores))]
    assert best["step"] < 6, scores  # the best is not the last: keeping the last prompt would fail below
    assert report.selection == Selection(protocol=protocol, step=best["step"], optimistic=protocol == "paper-val")
    if protocol == "paper-val":  # chosen on the reported split: the reported metrics are that evaluation's
        assert report.metrics == {k: best[k] for k in METRIC_KEYS}
    chosen = load_file(tmp_path / "run" / "best" / "prompt.safetensors")
    at_step = load_file(tmp_path / "run" / "checkpoints" / f"step-{best['step']:06d}" / "prompt.safetensors")
    torch.testing.assert_close(chosen, at_step, rtol=0, atol=0)
    torch.testing.assert_close(load_file(tmp_path / "run" / "prompt.safetensors"), at_step, rtol=0, atol=0)


def test_final_is_the_default_and_paper_val_is_marked_in_the_table(tiny_t5_dir, memorise_dir, tmp_path):
    final = run(tiny_t5_dir, memorise_dir, tmp_path / "final", eval_steps=0)
    assert final.selection == Selection(protocol="final", step=6, optimistic=False)
    last = load_file(tmp_path / "final" / "checkpoints" / "step-000006" / "prompt.safetensors")
    torch.testing.assert_close(load_file(tmp_path / "final" / "prompt.safetensors"), last, rtol=0, atol=0)
    run(tiny_t5_dir, memorise_dir, tmp_path / "paper", selection="paper-val")
    markdown, _ = table(collect([str(tmp_path / "final"), str(tmp_path / "paper")]))
    rows = [line.split(" | ")[0].strip("| ") for line in markdown.splitlines()[2:4]]
    assert rows == ["pt", "pt (best on val)"] and "as DPT's code selects" in markdown


@pytest.mark.parametrize("settings, said", [
    ({"selection": "dev"}, "add --dev_size"),
    ({"selection": "paper-val", "dev_size": 2}, "never uses"),
    ({"selection": "best"}, "--selection must be one of"),
])
def test_selection_refusals(settings, said):
    with pytest.raises(LrptError, match=said):
        RunConfig(**settings).validate()


def test_auto_is_dev_with_a_dev_split_else_final():
    assert RunConfig().selection_protocol == "final" and RunConfig(dev_size=0.1).selection_protocol == "dev"
    assert json.loads(json.dumps(RunConfig(selection="paper-val").to_dict()))["selection"] == "paper-val"
