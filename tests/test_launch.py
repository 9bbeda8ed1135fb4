"""The tests' own launches: rendezvous ports nothing else can take, and no rank outliving its launcher."""
from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from launch import ROOT, clean_env, run_group
from lrpt.trainer.runtime.distributed import free_port

SLEEPING_RANK = """import os, sys, time
from pathlib import Path
Path(sys.argv[-1], f"rank-{os.environ['RANK']}.pid").write_text(str(os.getpid()))
time.sleep(600)
"""


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, not yet reaped by its new parent) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_rendezvous_ports_are_outside_the_range_the_kernel_hands_out():
    """A port from bind(0) is an ephemeral one: released, the kernel may give it to any connection as its
    source port before the launcher binds it (the port race). Ours come from below that range."""
    low, _ = ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert all(1024 <= p < low for p in ports), ports
    assert len(set(ports)) > 10  # random: launchers started together rarely collide
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))  # and free when handed out


def test_a_timed_out_launcher_leaves_no_rank_behind(tmp_path):
    script = tmp_path / "sleep_rank.py"
    script.write_text(SLEEPING_RANK)
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(script), str(tmp_path)]
    with pytest.raises(AssertionError, match="timed out after 20 s; it and its ranks were killed"):
        run_group(cmd, timeout=20, cwd=ROOT, env=clean_env())
    pids = [int((tmp_path / f"rank-{r}.pid").read_text()) for r in range(2)]  # both ranks had started
    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids), [p for p in pids if alive(p)]
