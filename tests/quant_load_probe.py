"""Run under a launcher: quantized backbones loaded sharded (trainer/backbone/quant_load.py) or whole (the reference).

    deepspeed --num_gpus N tests/quant_load_probe.py OUT_DIR SESSIONS_JSON CHUNK,READ -- <lrpt train flags>

SESSIONS_JSON maps a session name to extra flags (--model, quantization, --quantized_load ...); the
sessions run one after the other in the same launch (one launcher start for every cell).
CHUNK,READ set trainer/backbone/quant_slices.py's CHUNK_ELEMENTS and READ_ELEMENTS (the tests' weights are far
smaller than real ones: scaled-down slices make every weight load in several reads and slices, as real
weights do). Each builds
lrpt's own engine with `trainer.loop.setup` and writes, per rank r, before any step:
- OUT_DIR/<name>/rank<r>.json: the allocator-measured load peak and how it was measured, the setup's
  wall time, the quantized layers' types, and (unless the session name ends in "load_only") the loss
  and full prompt gradient of this rank's first micro-batch;
- OUT_DIR/<name>/tensors<r>.safetensors: this rank's ZeRO shard (`ds_tensor`) of every backbone
  parameter, every buffer, and each quantized layer's replicated statistics (8-bit SCB; 4-bit
  quant_state tensors: absmax, code, nested absmax / code / offset), with the non-tensor quant_state
  fields in rank<r>.json.
"""
import gc
import json
import sys
import time
from pathlib import Path

import lrpt.trainer  # noqa: F401  (DS_ACCELERATOR before deepspeed)


def state_tensors(layer) -> tuple[dict, dict]:
    """A quantized layer's replicated statistics: tensors, and the other quant_state fields."""
    import torch

    if hasattr(layer, "SCB"):
        return {"SCB": layer.SCB}, {}
    state = layer.weight.quant_state.as_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, {k: str(v) for k, v in state.items() if k not in tensors}


def record(run) -> tuple[dict, dict]:
    import torch

    from lrpt.trainer.backbone import quant

    model = run.backbone.model
    tensors = {f"shard/{n}": p.ds_tensor.detach().contiguous().view(-1).view(torch.uint8).clone()
               for n, p in model.named_parameters()}
    tensors.update({f"buffer/{n}": b.detach().clone() for n, b in model.named_buffers()})
    meta = {}
    for name, layer in model.named_modules():
        if quant.is_quantized_layer(layer):
            stats, other = state_tensors(layer)
            tensors.update({f"stats/{name}/{k}": v.detach().clone() for k, v in stats.items()})
            meta[name] = {"type": type(layer).__name__, **other}
    return tensors, meta


def first_step(run) -> dict:
    import torch
    from deepspeed.utils import safe_get_full_grad

    batch = next(run.batches(epoch=0))
    run.engine.train()
    torch.manual_seed(run.cfg.seed)
    loss = run.engine(**batch).loss
    run.engine.backward(loss)
    grads = {n: safe_get_full_grad(p).tolist() for n, p in run.prompt.named_parameters()}
    run.engine.step()
    return {"loss": loss.item(), "grads": grads}


def probe(out: Path, flags: list[str], load_only: bool) -> None:
    from safetensors.torch import save_file

    from lrpt.trainer.runtime import distributed
    from lrpt.trainer.config.run_config import load_config
    from lrpt.trainer.train.loop import setup

    start = time.perf_counter()
    run = setup(load_config([*flags, "--output_dir", str(out / "run")]))
    seconds = time.perf_counter() - start
    rank = distributed.rank()
    tensors, layers = record(run)
    result = {"rank": rank, "world_size": distributed.world_size(), "stage": run.stage,
              "load_peak_bytes": run.load_peak_bytes, "load_peak_measured_by": run.load_peak_measured_by,
              "setup_seconds": seconds, "layers": layers}
    if not load_only:
        result.update(first_step(run))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / f"tensors{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    run.engine.destroy()  # the next session starts clean


def main() -> None:
    split = sys.argv.index("--")
    mine = [a for a in sys.argv[1:split] if not a.startswith("--local_rank")]  # the launcher adds it
    out, sessions, flags = Path(mine[0]), json.loads(mine[1]), sys.argv[split + 1:]
    import torch

    from lrpt.trainer.backbone import quant_slices

    quant_slices.CHUNK_ELEMENTS, quant_slices.READ_ELEMENTS = (int(n) for n in mine[2].split(","))
    torch.set_num_threads(1)  # the ranks share the machine's cores: no rank's thread pool waits on a busy core
    for name, extra in sessions.items():
        probe(out / name, [*flags, *extra], load_only=name.endswith("load_only"))
        gc.collect()


if __name__ == "__main__":
    main()
