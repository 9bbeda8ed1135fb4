"""Start lrpt under the real deepspeed launcher, 2 CPU ranks (DS_ACCELERATOR=cpu)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from lrpt.trainer.runtime.distributed import env_without_launcher, free_port

ROOT = Path(__file__).resolve().parents[1]


def clean_env() -> dict[str, str]:
    """The environment of a fresh shell: no launcher variables left by in-process runs."""
    env = env_without_launcher()
    env["DS_ACCELERATOR"] = "cpu"
    return env


def deepspeed_command(script: str, args: list[str], ranks: int = 2, launcher: str = "deepspeed") -> list[str]:
    """`deepspeed --num_gpus N` or `torchrun --nproc_per_node N` (plain RANK/WORLD_SIZE/... env vars)."""
    exe = str(Path(sys.executable).parent / launcher)
    port = str(free_port())
    if launcher == "torchrun":
        return [exe, "--nproc_per_node", str(ranks), "--master_port", port, str(ROOT / script), *args]
    return [exe, "--num_gpus", str(ranks), "--master_port", port, str(ROOT / script), *args]


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in a process group of its own, ended whole: a launcher killed on timeout (or whose
    ranks outlive it) leaves no rank behind to hold ports, memory and CPUs for the tests after it."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[0]} timed out after {timeout} s; it and its ranks were killed:\n"
                             f"{(out + err)[-4000:]}") from None
    finally:
        _kill_group(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def launch(script: str, args: list[str], ranks: int = 2, timeout: int = 600,
           launcher: str = "deepspeed") -> subprocess.CompletedProcess:
    done = run_group(deepspeed_command(script, args, ranks, launcher), timeout, cwd=ROOT, env=clean_env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done
