"""Which files in a run directory are lrpt's: the one list lrpt consults before it deletes anything.

A run directory may be shared with the user's own files (`--output_dir .` is a project root), so lrpt proves
ownership instead of going by names: every file it writes is recorded in the directory's manifest before it is
written (fixed names when the run claims the directory, each checkpoint's files as it lands, the monitors' files as
they appear). `--overwrite_output_dir`, checkpoint pruning and a re-saved checkpoint delete recorded files only, and
then only directories they left empty. A file at one of lrpt's names that the manifest does not list is in the way:
the run is refused, naming it, before any weight loads.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

MANIFEST = ".lrpt-files"
LOCK = ".lrpt-lock"
CONFIG = "config.yaml"
# written under these names at fixed places; recorded when a run claims its directory
FIXED = (CONFIG, "report.json", "report.json.tmp", "prompt.safetensors", "prompt_dense.safetensors",
         "eval_predictions.jsonl", "best/prompt.safetensors", "best/prompt_dense.safetensors",
         "checkpoints/latest", "checkpoints/latest.tmp")
# DeepSpeed's csv monitor writes <output_path>/<job_name>/<event>.csv (rundir.monitor: job_name "logs")
MONITOR_CSVS = tuple(f"logs/Train_Samples_{event}.csv" for event in ("loss", "grad_norm", "tokens_per_s", "lr"))
CHECKPOINT_FILES = "checkpoints/step-*/**/*"  # DeepSpeed's names: recorded as each checkpoint lands
# the monitors' files, named by time and host: recorded as they appear; never in the way (a launch starts new ones)
MONITOR_GROWN = ("logs/events.out.tfevents.*", "wandb/**/*")
STAGING = "checkpoints/.staging"  # lrpt's private area for a checkpoint being written (hidden; only a save writes it)


def owned(out: Path) -> set[str]:
    """The paths (relative, POSIX) the manifest of `out` records as lrpt's."""
    path = Path(out) / MANIFEST
    return set(path.read_text().split("\n")) - {""} if path.is_file() else set()


def record(out: Path, names) -> None:
    """Add paths (relative to `out`) to the manifest; written whole and renamed, so a reader never sees half."""
    out = Path(out)
    mine = owned(out)
    new = {str(name) for name in names} - mine
    if new:
        _write(out, mine | new)


def record_tree(out: Path, folder: Path, under: Path | None = None) -> None:
    """Record every file in `folder` as lrpt's, named as they will be once `folder` is renamed to `under`."""
    out, folder = Path(out), Path(folder)
    under = Path(under or folder).relative_to(out)
    record(out, [(under / p.relative_to(folder)).as_posix() for p in folder.rglob("*") if p.is_file()])


def record_monitors(out: Path) -> None:
    """Record the event files the monitors (TensorBoard, W&B) wrote under names lrpt could not know."""
    out = Path(out)
    record(out, [p.relative_to(out).as_posix() for pattern in MONITOR_GROWN for p in out.glob(pattern)
                 if p.is_file()])


def claim_names(out: Path) -> None:
    """Record every fixed name a run may write, before it writes any (the run directory was checked first)."""
    record(out, [*FIXED, *MONITOR_CSVS])


def in_the_way(out: Path) -> list[str]:
    """Files at names lrpt writes that its manifest does not list (the user's, or an older lrpt's)."""
    out = Path(out)
    mine = owned(out)
    candidates = [out / name for name in (*FIXED, *MONITOR_CSVS)]
    candidates += list(out.glob(CHECKPOINT_FILES))
    return sorted({p.relative_to(out).as_posix() for p in candidates if p.is_file() or p.is_symlink()} - mine)


def remove(out: Path, under: str = "") -> list[str]:
    """Delete the recorded files (all of them, or those under `under`), then the directories that this left
    empty; unrecorded files stay where they are. Returns what was deleted."""
    out = Path(out)
    mine = owned(out)
    prefix = under.rstrip("/") + "/" if under else ""
    gone = sorted(name for name in mine if name.startswith(prefix))
    for name in gone:
        (out / name).unlink(missing_ok=True)
    for folder in sorted({(out / name).parent for name in gone}, key=lambda p: len(p.parts), reverse=True):
        _remove_empty(folder, out)
    _write(out, mine - set(gone))
    return gone


def clear(out: Path) -> list[str]:
    """--overwrite_output_dir: every recorded file and lrpt's staging area; the user's files stay."""
    clear_staging(out)
    _remove_empty(Path(out) / STAGING, Path(out))
    return remove(out)


def remove_tree(out: Path, folder: Path) -> None:
    """Delete a directory lrpt wrote whole (a checkpoint): its recorded files, and it if nothing else is left."""
    remove(out, Path(folder).relative_to(out).as_posix())


def clear_staging(out: Path, tag: str = "") -> None:
    """Empty lrpt's staging area (one tag's, or all): what a save killed half-way left there, which no manifest
    could list (DeepSpeed names its files as it writes them), is lrpt's by construction."""
    shutil.rmtree(Path(out) / STAGING / tag, ignore_errors=True)


def _remove_empty(folder: Path, out: Path) -> None:
    """rmdir `folder` and its empty parents, never `out` itself or anything outside it."""
    while folder != out and out in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (a file lrpt did not write), or gone already
            return
        folder = folder.parent


def _write(out: Path, names: set[str]) -> None:
    tmp = out / (MANIFEST + f".{os.getpid()}.tmp")
    tmp.write_text("".join(name + "\n" for name in sorted(names)))
    os.replace(tmp, out / MANIFEST)
