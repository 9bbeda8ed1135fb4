"""Shared fixtures: tiny backbones saved with save_pretrained, and SuperGLUE-format data we write."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import lrpt.trainer  # noqa: F401  (sets DS_ACCELERATOR before anything imports deepspeed)
from lrpt.trainer.backbone.presets import save_preset

# Four RTE rows to memorise: a prompt alone must be able to push the loss down on these.
MEMORISE = [
    {"premise": "A cat sat on the mat.", "hypothesis": "A cat sat.", "label": "entailment"},
    {"premise": "The sun is hot today.", "hypothesis": "It is snowing.", "label": "not_entailment"},
    {"premise": "Tom reads a book.", "hypothesis": "Tom reads.", "label": "entailment"},
    {"premise": "Birds fly south.", "hypothesis": "Fish fly north.", "label": "not_entailment"},
]


def write_task(root: Path, task_dir: str, splits: dict[str, list[dict]]) -> Path:
    (root / task_dir).mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (root / task_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="session")
def memorise_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("data"), "RTE", {"train": MEMORISE, "val": MEMORISE})


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> str:
    return save_preset("tiny-t5", str(tmp_path_factory.mktemp("tiny-t5")), width=64)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    return save_preset("tiny-llama", str(tmp_path_factory.mktemp("tiny-llama")), width=64)


@pytest.fixture(scope="session")
def backbone_dirs(tiny_t5_dir, tiny_llama_dir) -> dict[str, str]:
    return {"t5": tiny_t5_dir, "llama": tiny_llama_dir}
