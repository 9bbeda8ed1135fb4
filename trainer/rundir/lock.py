"""One live run per run directory: the first launch locks it before any other work, a second is refused.

The lock is an advisory `flock` on a file in the directory, held for the life of the process: the kernel drops it
when the process dies, however it dies, so a lock left by a dead run is free by construction (no pid guessing), and
on NFS the lock is the server's. The file also says who holds it, for the refusal. Under a launcher rank 0 locks
for all ranks.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import LrptError
from .files import LOCK

_HELD: dict[Path, int] = {}  # run directory -> this process's open, locked file


def acquire(out: Path) -> None:
    """Lock `out` for this process (again: a no-op), or refuse naming the live run that holds it."""
    out = Path(out).resolve()
    if out in _HELD:
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LrptError(f"{out} is in use by a live run ({holder}): wait for it to end, or choose another "
                        "--output_dir") from None
    _HELD[out] = fd


def announce(out: Path) -> None:
    """Say who holds `out`, for a second launch's refusal: once the run is going ahead (a refused or finished
    relaunch touches nothing in the directory)."""
    fd = _HELD[Path(out).resolve()]
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%F %T"),
                              "command": " ".join(sys.argv)}).encode(), 0)


def release(out: Path) -> None:
    """Let another launch take `out` (the file stays: removing a lock file under a waiting process races)."""
    fd = _HELD.pop(Path(out).resolve(), None)
    if fd is not None:
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {who['pid']} on {who['host']} since {who['since']}: {who['command']}"
    except (ValueError, KeyError, OSError):
        return "a process that has not yet said who it is"
