"""Checkpoints of the prompt only: factors, their optimizer and scheduler state, and the dense prompt.

Layout: <output_dir>/checkpoints/step-000050/ holds DeepSpeed's checkpoint written with
`exclude_frozen_parameters=True` (no backbone weights), `prompt.safetensors` (the factors and
buffers), `prompt_dense.safetensors` (P for export) and `trainer_state.json`.
A checkpoint is written to a staging directory and renamed into place, then `latest` is replaced
atomically: a save killed half-way never damages the last good checkpoint. Its files are recorded as lrpt's
before the rename, and pruning deletes recorded files only (rundir.files).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import deepspeed
import torch
from safetensors.torch import load_file, save_file

from ...methods import PromptModule
from ..errors import LrptError
from ..runtime import distributed
from . import files as run_files


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_prompt(prompt: PromptModule, directory: Path, metadata: dict[str, str]) -> None:
    """Rank 0 writes the factors and the dense prompt (gathered first under ZeRO-3)."""
    with deepspeed.zero.GatheredParameters(list(prompt.parameters())):
        if distributed.is_main():
            state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in prompt.state_dict().items()}
            save_file(state, directory / "prompt.safetensors", metadata=metadata)
            save_file({"prompt": prompt.dense().to(torch.float32).contiguous()},
                      directory / "prompt_dense.safetensors", metadata=metadata)


def load_prompt(prompt: PromptModule, path: Path) -> None:
    """Load factors written by `save_prompt` (every rank reads; under ZeRO-3 rank 0's copy is re-partitioned)."""
    state = load_file(path)
    with deepspeed.zero.GatheredParameters(list(prompt.parameters()), modifier_rank=0):
        prompt.load_state_dict(state)


def save(engine, prompt: PromptModule, output_dir: str | Path, step: int, trainer_state: dict,
         metadata: dict[str, str], keep: int) -> Path:
    out = Path(output_dir)
    root = checkpoints_dir(out)
    tag = f"step-{step:06d}"
    final, staged = root / tag, out / run_files.STAGING / tag
    if distributed.is_main():
        run_files.clear_staging(out, tag)
    distributed.barrier()
    engine.save_checkpoint(str(staged.parent), tag=tag, save_latest=False, exclude_frozen_parameters=True)
    save_prompt(prompt, staged, metadata)
    if distributed.is_main():
        (staged / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        run_files.remove_tree(out, final)  # this step saved before (a resumed run's last step, saved again)
        run_files.record_tree(out, staged, under=final)
        os.replace(staged, final)
        tmp = root / "latest.tmp"
        tmp.write_text(tag)
        os.replace(tmp, root / "latest")
        _prune(out, keep, final)
        run_files.record_monitors(out)
    distributed.barrier()
    return final


def step_of(checkpoint: Path) -> int:
    """The step a `step-N` directory holds (by number: step-1000000 comes after step-999999)."""
    return int(checkpoint.name.split("-")[-1])


def _prune(out: Path, keep: int, written: Path) -> None:
    """Keep the `keep` checkpoints of the highest steps, and always the one just written (`latest`)."""
    root = checkpoints_dir(out)
    tags = sorted((p for p in root.glob("step-*") if p.is_dir() and p.name.split("-")[-1].isdigit()), key=step_of)
    for old in [p for p in tags[:max(0, len(tags) - keep)] if p != written]:
        run_files.remove_tree(out, old)


def latest(output_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, None if there is no `latest`; one that names a missing
    directory is an error, never a silent start from step 0."""
    pointer = checkpoints_dir(output_dir) / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not path.is_dir():
        raise LrptError(f"{pointer} names {path.name}, which does not exist: resume from another checkpoint with "
                        f"--resume_from_checkpoint {pointer.parent}/step-N, or start afresh in a new --output_dir")
    return path


def load(engine, checkpoint: Path) -> dict:
    """Restore prompt factors, optimizer and scheduler; returns the trainer state."""
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        raise LrptError(f"{checkpoint} is not an lrpt checkpoint (no trainer_state.json)")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LrptError(f"{state_file}: not valid JSON ({exc}); resume from an earlier checkpoint "
                        "(--resume_from_checkpoint <output_dir>/checkpoints/step-N)") from None
    load_path, _ = engine.load_checkpoint(str(checkpoint.parent), tag=checkpoint.name, load_module_strict=False)
    if load_path is None:
        raise LrptError(f"{checkpoint}: DeepSpeed found no checkpoint files of this run's ranks there; resume from "
                        "an earlier checkpoint (--resume_from_checkpoint <output_dir>/checkpoints/step-N)")
    return state
