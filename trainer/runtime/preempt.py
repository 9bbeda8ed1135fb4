"""Preemption: SIGUSR1 asks a run to checkpoint and stop, so that its requeued job resumes.

Slurm sends SIGUSR1 to the training processes `--signal=USR1@N` seconds before the time limit
(slurm/*.sh ask for it; `scancel --signal=USR1 --batch JOB` does the same by hand, through the
batch script, which forwards it to its step). The handler only raises a flag; `fit` asks after
every optimizer step whether any rank has it (`stop_requested`, a collective: a ZeRO-3
checkpoint needs every rank), writes the checkpoint, and exits with EXIT_CODE.
slurm/common.sh then requeues the job, and the same --output_dir resumes from that checkpoint.
"""
from __future__ import annotations

import signal
import threading

from . import distributed

SIGNAL = signal.SIGUSR1
EXIT_CODE = 75  # EX_TEMPFAIL, "try again later": checkpoint written, the run is not finished

_requested = False


def _handler(signum, frame) -> None:
    global _requested
    _requested = True


def install() -> None:
    """From now on SIGUSR1 raises the flag instead of killing the process; clears the flag (one per
    run). Python handles signals in the main thread only; elsewhere this does nothing."""
    global _requested
    _requested = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(SIGNAL, _handler)


def stop_requested() -> bool:
    """Whether any rank got the signal. Every rank must call it at the same point."""
    return distributed.any_rank(_requested)
