"""Process-group set-up: the same code path for one process, the deepspeed launcher, torchrun and srun."""
from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import torch.distributed as dist

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A port for a launcher's rendezvous, below the kernel's ephemeral range: a port the kernel handed out
    (bind to 0) and that was released may be handed out again, as some connection's source port, before the
    launcher binds it. Random, so that launchers started at once rarely pick the same one; bindable now."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port below {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# what `deepspeed trainer/run.py` launches, wherever lrpt is installed
TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "run.py"  # trainer/run.py, the launchers' entry


def env_without_launcher() -> dict[str, str]:
    """This process's environment minus the launcher's variables: for a child that must start
    its own process group (a benchmark worker, a nested launcher)."""
    return {k: v for k, v in os.environ.items() if k not in (*LAUNCHER_VARS, "LOCAL_RANK")}


def launched() -> bool:
    """Whether a launcher (deepspeed, torchrun, srun via slurm/common.sh) set up this process."""
    return dist.is_initialized() or all(v in os.environ for v in LAUNCHER_VARS)


def init_process_group() -> None:
    """Join the launcher's process group, or make a one-process group when started plainly.

    DeepSpeed's engine needs a process group even for one process; `lrpt train` must work without
    a launcher, so a missing launcher environment means "world of one on this host".
    """
    if dist.is_initialized():
        return
    if not launched():
        # port 0: the one-process store binds a port the kernel picks and keeps it (no other rank connects)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                               verbose=False)
    get_accelerator().set_device(int(os.environ["LOCAL_RANK"]))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast(value):
    """Rank 0's value on every rank (e.g. a timestamped run directory)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (e.g. a signal only some ranks got)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return bool(flag)
    import torch
    from deepspeed.accelerator import get_accelerator

    box = torch.tensor([int(bool(flag))], device=get_accelerator().current_device_name())
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def gather(value) -> list:
    """Every rank's value, on every rank (for per-rank report fields)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def without_launcher_args(argv: list[str]) -> list[str]:
    """The arguments less the `--local_rank=N` the deepspeed launcher puts first (LOCAL_RANK in the
    environment says the same)."""
    return [a for a in argv if not a.startswith("--local_rank=")]


def shutdown() -> None:
    """Leave the process group together (every rank calls it): a rank that exits while the group's
    communication threads still run can abort in their destructors ("terminate called without an active
    exception"), which fails the launch after the work was done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def leave_launch() -> None:
    """`shutdown` at the end of a launched command of several ranks (the process ends next). A group of one
    stays: an in-process caller may run another command in it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        shutdown()
