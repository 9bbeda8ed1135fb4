"""Start lrpt under the real deepspeed launcher, 2 CPU ranks (DS_ACCELERATOR=cpu)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from lrpt.trainer.distributed import env_without_launcher

ROOT = Path(__file__).resolve().parents[1]
def clean_env() -> dict[str, str]:
    """The environment of a fresh shell: no launcher variables left by in-process runs."""
    env = env_without_launcher()
    env["DS_ACCELERATOR"] = "cpu"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_command(script: str, args: list[str], ranks: int = 2, launcher: str = "deepspeed") -> list[str]:
    """`deepspeed --num_gpus N` or `torchrun --nproc_per_node N` (plain RANK/WORLD_SIZE/... env vars)."""
    exe = str(Path(sys.executable).parent / launcher)
    port = str(free_port())
    if launcher == "torchrun":
        return [exe, "--nproc_per_node", str(ranks), "--master_port", port, str(ROOT / script), *args]
    return [exe, "--num_gpus", str(ranks), "--master_port", port, str(ROOT / script), *args]


def launch(script: str, args: list[str], ranks: int = 2, timeout: int = 600,
           launcher: str = "deepspeed") -> subprocess.CompletedProcess:
    done = subprocess.run(deepspeed_command(script, args, ranks, launcher), cwd=ROOT, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done
