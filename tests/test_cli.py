"""The console script: clean errors for bad input (the embedded default end to end: test_real_backbone)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launch import clean_env
from lrpt.trainer.cli.main import main

@pytest.mark.parametrize("argv, message", [
    (["--method", "prefix"],
     "unknown method 'prefix'; known methods: dept, dpt, lamp, lopt1, lopt2, pt, residual, ulpt"),
    (["--prompt_length", "0"], "--prompt_length must be >= 1"),
    (["--method", "dpt", "--rank", "500"], "min(c, e)"),
    (["--method", "lamp", "--prompt_length", "10", "--pool", "11"], "pool"),
    (["--model", "/no/such/dir"], "model path '/no/such/dir' does not exist"),
    (["--task", "squad"], "unknown task 'squad'; known tasks:"),
    (["--method", "pt", "--rank", "4"], "method 'pt' does not take --rank (its options: --init, --init_text)"),
    (["--method", "dpt", "--zero", "3", "--deepspeed", "x.json"], "--zero and --deepspeed both name"),
    (["--quant", "8bit", "--load_in_8bit", "false"], "--quant 8bit contradicts --load_in_8bit False"),
    (["--deepspeed", "/no/such.json"], "no such file"),
    (["--precision", "fp16"], "T5's activations overflow fp16"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(["train", "--model", "tiny-t5", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("lrpt train: error:") and err.count("\n") == 1


def test_bad_input_has_no_traceback(tmp_path):
    lrpt = os.path.join(os.path.dirname(sys.executable), "lrpt")
    done = subprocess.run([lrpt, "train", "--method", "nope"], cwd=tmp_path, capture_output=True, text=True,
                          env=clean_env())
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "known methods" in done.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_invalid_deepspeed_json(tmp_path, capsys):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 3,}')
    assert main(["train", "--model", "tiny-t5", "--deepspeed", str(bad), "--output_dir", str(tmp_path / "out")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_the_hub_kernel_warning_of_bitsandbytes_is_dropped_and_only_it():
    """bitsandbytes logs it at import on CPUs with AVX512-BF16 (not every machine here has them), so the
    message is taken from bitsandbytes' own source and sent through its own logger."""
    import logging
    import re
    from pathlib import Path

    import bitsandbytes.backends.cpu.ops as bnb_cpu_ops

    import lrpt.trainer  # noqa: F401  (installs the filter)

    source = Path(bnb_cpu_ops.__file__).read_text()
    (message,) = re.findall(r'logger\.warning\(\s*"(Failed to load CPU gemm_4bit_forward[^"]*)"', source)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = bnb_cpu_ops.logger  # the logger it warns through
    logger.addHandler(handler)
    try:
        logger.warning(message, ModuleNotFoundError("No module named 'kernels'"))
        logger.warning("some other bitsandbytes warning")
    finally:
        logger.removeHandler(handler)
    assert seen == ["some other bitsandbytes warning"]


def test_a_build_lock_left_by_a_killed_build_does_not_hang_the_next_run(tiny_t5_dir, memorise_dir, tmp_path):
    """The torch-extensions cache of this machine (DeepSpeed's CPU op built), copied, with the lock a
    build killed an hour ago leaves: torch alone would wait on it forever."""
    import shutil
    import time

    from lrpt.trainer.runtime import build_lock

    built = next(p for p in build_lock.extensions_root().glob("**/deepspeed_shm_comm") if list(p.glob("*.so")))
    cache = tmp_path / "extensions"  # TORCH_EXTENSIONS_DIR holds one folder per op
    shutil.copytree(built, cache / "deepspeed_shm_comm", symlinks=True, ignore=shutil.ignore_patterns("lock"))
    lock = cache / "deepspeed_shm_comm" / "lock"
    lock.touch()
    hour_ago = time.time() - 3600
    os.utime(lock, (hour_ago, hour_ago))
    lrpt = os.path.join(os.path.dirname(sys.executable), "lrpt")
    done = subprocess.run([lrpt, "train", "--model", tiny_t5_dir, "--data_dir", str(memorise_dir), "--task", "rte",
                           "--max_steps", "1", "--output_dir", str(tmp_path / "run"), "--progress", "false",
                           "--batch", "2"], capture_output=True,
                          text=True, timeout=120, env={**clean_env(), "TORCH_EXTENSIONS_DIR": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"removed {lock}: a build lock left by a build that was killed" in done.stdout
    assert not lock.exists() and (tmp_path / "run" / "report.json").is_file()

    # a lock some process holds open is a build under way: left alone
    fd = os.open(lock, os.O_CREAT | os.O_EXCL)
    try:
        os.utime(lock, (hour_ago, hour_ago))
        assert build_lock.clear_stale_locks(print, root=cache) == [] and lock.exists()
    finally:
        os.close(fd)
        lock.unlink()
