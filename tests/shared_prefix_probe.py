"""Run under a launcher: the shared prefix against the standard path, cell by cell, in one launch.

    deepspeed --num_gpus 2 tests/shared_prefix_probe.py OUT_DIR CELLS_JSON -- <lrpt train flags>

CELLS_JSON maps a cell name to extra flags (ZeRO config, quantization, gradient checkpointing,
precision). Each cell builds lrpt's own engine once (`trainer.loop.setup`, --shared_prefix true),
saves its step-0 checkpoint, trains STEPS steps on the standard path, restores the checkpoint
(lrpt's resume, bit-exact) and trains the same steps on the shared path. Per rank r it writes
OUT_DIR/<cell>/rank<r>.json: whether setup resolved the shared path (what the report states) and,
for each path, the first micro-batch's loss and full prompt gradient, the loss curve, and each
step's all-gathers (count and bytes, from DeepSpeed's comms logger; the first step of an engine is
ZeRO-3's trace-recording one, gathering module by module).
"""
import gc
import itertools
import json
import sys
from pathlib import Path

import lrpt.trainer  # noqa: F401  (DS_ACCELERATOR before deepspeed)

STEPS = 4


def gathers() -> dict:
    """All-gathers the comms logger recorded since it was last cleared: count and bytes."""
    from deepspeed.comm import comms_logger

    count = size = 0
    for name, by_size in comms_logger.comms_dict.items():
        if "gather" in name:
            for msg_size, record in by_size.items():
                count += record[0]
                size += record[0] * msg_size
    return {"count": count, "bytes": size}


def train_path(run, batches: list[dict], shared: bool) -> dict:
    import deepspeed.comm as dist
    from deepspeed.utils import safe_get_full_grad

    run.model.shared_prefix = shared
    run.engine.train()
    curve, per_step, first = [], [], {}
    for i, batch in enumerate(batches):
        dist.comms_logger.comms_dict.clear()
        loss = run.engine(**batch).loss
        run.engine.backward(loss)
        if i == 0:
            first = {"loss": loss.item(),
                     "grads": {n: safe_get_full_grad(p).tolist() for n, p in run.prompt.named_parameters()}}
        run.engine.step()
        per_step.append(gathers())
        curve.append(loss.item())
    return {**first, "curve": curve, "gathers": per_step}


def cell(out: Path, flags: list[str]) -> None:
    import deepspeed.comm as dist

    from lrpt.trainer.rundir import checkpoint

    from lrpt.trainer.runtime import distributed
    from lrpt.trainer.config.run_config import load_config
    from lrpt.trainer.train.loop import setup

    run = setup(load_config([*flags, "--output_dir", str(out / "run"), "--shared_prefix", "true"]))
    dist.configure(enabled=True, prof_all=True, verbose=False)
    batches = list(itertools.islice(run.batches(epoch=0), STEPS))
    saved = checkpoint.save(run.engine, run.prompt, out / "run", 0, {"step": 0}, {}, keep=1)
    result = {"resolved": run.model.shared_prefix, "standard": train_path(run, batches, shared=False)}
    checkpoint.load(run.engine, saved)
    result["shared"] = train_path(run, batches, shared=True)
    result["stage"] = run.stage
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(result))
    dist.configure(enabled=False)
    run.engine.destroy()  # the next cell starts clean


def main() -> None:
    split = sys.argv.index("--")
    mine = [a for a in sys.argv[1:split] if not a.startswith("--local_rank")]  # the launcher adds it
    out, cells, flags = Path(mine[0]), json.loads(Path(mine[1]).read_text()), sys.argv[split + 1:]
    for name, extra in cells.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        cell(out / name, [*flags, *extra])
        gc.collect()


if __name__ == "__main__":
    main()
