"""Few-shot samples and the carved dev split: fixed by their seeds and nothing else."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import datasets
import pytest

from lrpt.eval.data import load_split
from lrpt.eval.fewshot import sample_few_shot
from lrpt.eval.splits import carve_dev
from lrpt.eval.tasks import get_task


def rows(n: int = 50) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"idx": list(range(n)), "label": [i % 3 for i in range(n)]})


def test_same_task_k_seed_same_sample_whatever_else():
    data = rows()
    random.seed(1)
    first = list(sample_few_shot(data, "rte", 8, seed=0)["idx"])
    random.seed(2)
    random.random()
    assert sample_few_shot(data, "rte", 8, seed=0)["idx"] == first
    assert len(first) == 8 and len(set(first)) == 8 and first == sorted(first)
    # another process with another hash seed draws the same rows
    code = ("import datasets; from eval.fewshot import sample_few_shot; "
            "d = datasets.Dataset.from_dict({'idx': list(range(50)), 'label': [i % 3 for i in range(50)]}); "
            "print(list(sample_few_shot(d, 'rte', 8, seed=0)['idx']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == str(first)


def test_seeds_and_tasks_give_different_samples():
    data = rows()
    by_seed = {tuple(sample_few_shot(data, "rte", 8, seed=s)["idx"]) for s in range(5)}
    assert len(by_seed) == 5
    assert sample_few_shot(data, "cb", 8, seed=0)["idx"] != sample_few_shot(data, "rte", 8, seed=0)["idx"]


def test_k_counts_official_rows():
    multirc = get_task("multirc")
    train = load_split(multirc, "train")
    sample = sample_few_shot(train, "multirc", 4, seed=0)
    assert len(sample) == 4 and sample.column_names == train.column_names
    assert sample_few_shot(rows(), "rte", 50, seed=3)["idx"] == list(range(50))


@pytest.mark.parametrize("k", [0, -1, 51])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match="k="):
        sample_few_shot(rows(), "rte", k, seed=0)


def test_carve_dev_deterministic_disjoint_covering():
    data = rows(40)
    train, dev = (list(part["idx"]) for part in carve_dev(data, 10, seed=0))
    assert (train, dev) == tuple(list(part["idx"]) for part in carve_dev(data, 10, seed=0))
    assert len(dev) == 10 and len(train) == 30
    assert not set(train) & set(dev)
    assert sorted(train + dev) == list(range(40))
    assert train == sorted(train) and dev == sorted(dev)
    assert list(carve_dev(data, 10, seed=1)[1]["idx"]) != dev
    assert len(carve_dev(data, 0.25, seed=0)[1]) == 10
    assert list(carve_dev(data, 10.0, seed=0)[1]["idx"]) == dev          # a count passed as a float


@pytest.mark.parametrize("size", [0, 40, 0.0, 1.0, 1.5])
def test_carve_dev_sizes_that_leave_a_side_empty(size):
    with pytest.raises(ValueError):
        carve_dev(rows(40), size, seed=0)


def test_few_shot_k8_with_the_default_batch_trains_on_every_task(tiny_t5_dir, tmp_path, capsys):
    """K = 8 usable rows for every task (WSC: 8 positive rows, where drawing among all rows leaves ~4), and a
    training set smaller than one global batch of 8 trains on what there is, saying so."""
    from lrpt.eval.data import load_formatted
    from lrpt.eval.tasks import TASKS
    from lrpt.trainer.config.run_config import RunConfig
    from lrpt.trainer.train.loop import train

    for name in TASKS:
        cfg = RunConfig(model=tiny_t5_dir, task=name, few_shot=8, seed=1, max_steps=1, prompt_length=4,
                        decoding="rank", max_eval_samples=2, progress=False, output_dir=str(tmp_path / name))
        assert cfg.per_device_train_batch_size == 8  # the default batch
        report = train(cfg).report
        examples = report.data.train_examples
        assert report.train.steps == 1 and examples >= 8, (name, report.data)
        batch = report.data.train_batch_size
        assert batch == min(8, examples), (name, batch, examples)
        if name == "wsc":  # exactly the 8 drawn rows, all positive (the demo split has 21 of 40)
            assert examples == 8 and len(load_formatted(get_task("wsc"), "train", train=True)) == 21
