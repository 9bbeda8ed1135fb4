"""DeepSpeed's JIT-built ops, and the lock a killed build leaves behind.

torch.utils.cpp_extension builds an op (on CPU, DeepSpeed's shared-memory communication op) once,
under `$TORCH_EXTENSIONS_DIR/<op>/lock` (default `~/.cache/torch_extensions/<python+device>/<op>/lock`),
a file its builder creates and holds open
until the build ends. A builder killed half-way leaves the file, and every later process waits on
it forever without a word. Before DeepSpeed starts, lrpt clears such a lock: one that no live
process on this machine holds open and that has not changed for STALE_AFTER_S seconds (a builder
on another node sharing the cache holds it where /proc cannot see, so a young lock is waited
for, and said so, rather than taken away). It also says when the one-time build is about to run.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

STALE_AFTER_S = 300.0
POLL_S = 5.0


def extensions_root() -> Path:
    """Where torch builds ops: TORCH_EXTENSIONS_DIR itself, or one folder per python+device below the default."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def _under_root(root: Path, pattern: str) -> list[Path]:
    return sorted({*root.glob(pattern), *root.glob(f"*/{pattern}")})


def held_open(path: Path) -> bool:
    """Whether a live process on this machine has `path` open (every /proc/<pid>/fd we may read)."""
    target = str(path.resolve())
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                return True
        except OSError:  # the process ended, or is not ours to look at
            continue
    return False


def clear_stale_locks(log: Callable[[str], None], root: Path | None = None,
                      stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove build locks nobody holds (waiting while one is young); returns the locks removed."""
    removed = []
    for lock in _under_root(root or extensions_root(), "*/lock"):
        announced = False
        while lock.exists() and not held_open(lock):
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                break
            if age >= stale_after_s:
                lock.unlink(missing_ok=True)
                removed.append(lock)
                log(f"removed {lock}: a build lock left by a build that was killed (no process holds it)")
                break
            if not announced:
                log(f"waiting for {lock}: no process here holds it; another node may be building that op. "
                    f"It is removed once unchanged for {stale_after_s:.0f} s")
                announced = True
            time.sleep(POLL_S)
    return removed


def announce_cpu_comm_build(log: Callable[[str], None]) -> None:
    """On the CPU accelerator, DeepSpeed builds its communication op at the first start: say why it waits."""
    import torch

    if torch.cuda.is_available() or os.environ.get("DS_ACCELERATOR", "cpu") != "cpu":
        return
    if not _under_root(extensions_root(), "deepspeed_shm_comm/*.so"):
        log(f"building DeepSpeed's CPU communication op once (about a minute; cached under {extensions_root()})")
