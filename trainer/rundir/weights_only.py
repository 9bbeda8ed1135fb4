"""Resume never unpickles code from a run directory.

DeepSpeed reads its checkpoint files with `torch.load(weights_only=False)`, so a crafted
`mp_rank_00_model_states.pt` in a copied or shared run directory would run its code on resume.
`install` gives the engine a checkpoint engine that reads them with `weights_only=True`: tensors,
containers and numbers, plus the few plain-data DeepSpeed classes its optimizer files hold. Any
other object in a file is refused, and an unreadable file is one error that names it. DeepSpeed settings that
would read other files (`checkpoint.load_universal`: a universal checkpoint's zero/ files) are refused before
any weight loads, where the DeepSpeed config is resolved.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from ..errors import LrptError

# what ZeRO-1/2/3 and bf16/fp16 optimizer checkpoints hold besides tensors: data, no behaviour on load
DEEPSPEED_DATA = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's own torch checkpoint engine (the same files), read with weights_only=True."""

    def load(self, path: str, map_location=None):
        return load(path, map_location)


def load(path: str | Path, map_location=None):
    """torch.load(weights_only=True) of one DeepSpeed checkpoint file; anything else is one LrptError naming it."""
    try:
        with torch.serialization.safe_globals(DEEPSPEED_DATA):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f"it would call {found.group(1)}" if found else "it holds more than tensors and data"
        raise LrptError(f"{path}: refused to load: {what}, which no checkpoint lrpt writes does. Resume only run "
                        "directories you trust to be lrpt's, or start afresh with --overwrite_output_dir") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise LrptError(f"{path}: cannot read this checkpoint file ({str(exc).splitlines()[0][:200]}); resume "
                        "from an earlier one (--resume_from_checkpoint <output_dir>/checkpoints/step-N) or "
                        "start afresh with --overwrite_output_dir") from None


def check(checkpoint: Path) -> None:
    """Read every DeepSpeed file of a checkpoint the way resume will, before any weight loads (they hold the
    prompt and its optimizer state only: kilobytes)."""
    for path in sorted(checkpoint.glob("*.pt")):
        load(path, map_location="cpu")


def install(engine) -> None:
    """Replace the checkpoint engine DeepSpeed made (it reads checkpoints and writes them unchanged)."""
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise LrptError(f"the DeepSpeed config selects the {type(engine.checkpoint_engine).__name__}, which loads "
                        "checkpoints with pickle; lrpt resumes only through the default torch checkpoint engine: "
                        "remove the config's checkpoint writer / nebula section")
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
