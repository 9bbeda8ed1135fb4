"""Run under a launcher with a quantized backbone:

    deepspeed --num_gpus 2 tests/quant_probe.py OUT_DIR SESSIONS_JSON -- <lrpt train flags>

SESSIONS_JSON maps a session name to extra flags (e.g. {"zero3": ["--deepspeed", ".../zero3.json"]});
the sessions run one after the other in the same launch (one launcher start for several cells).
Each builds lrpt's own engine with `trainer.loop.setup` and writes, per rank r:
- OUT_DIR/<name>/rank<r>.json: the loss and full prompt gradient of this rank's first micro-batch,
  the losses of a few more steps, the bytes the quantized layers (and the whole frozen backbone)
  hold after the first step, the replicated 4-bit quant_state bytes, how many full-size copies of
  a quantized matrix are alive anywhere in the process, and the loss before and after rank 1
  zeroes its own shards of the *quantized* layers' weights (proves those layers compute from the
  gathered shard, not from a hidden full copy);
- OUT_DIR/<name>/shards<r>.pt: each quantized layer's ZeRO shard (`ds_tensor`) and its replicated
  statistics (8-bit row scale SCB; 4-bit absmax), to compare with the unsharded reference.
In the first session the shards are then restored and `fit` runs the usual loop to the end,
evaluation included (report.json in OUT_DIR/<name>/run); later sessions skip it (CI time: under
ZeRO-3 every generated token gathers every layer).
A session whose name ends in "bnb_native" skips lrpt's 8-bit conversion (a negative control).
"""
import gc
import json
import sys
from pathlib import Path

import lrpt.trainer  # noqa: F401  (DS_ACCELERATOR before deepspeed)


def full_copies_alive(weights) -> int:
    """Live tensors anywhere in this process with the size and dtype of a whole quantized matrix
    (a partitioned ZeRO parameter itself is empty, so only hidden copies count)."""
    import torch

    sizes = {(w.dtype, getattr(w, "ds_numel", w.numel())) for w in weights}
    gc.collect()
    live = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    # ZeRO parameters and their shards are not hidden copies (a big layer's half may have a small
    # layer's size; a parameter ZeRO keeps gathered is counted apart, as "still_gathered")
    params = [o for o in live if getattr(o, "ds_tensor", None) is not None]
    shards = {t.untyped_storage().data_ptr() for p in params for t in (p.ds_tensor, p.data) if t.numel()}
    return sum(1 for o in live if (o.dtype, o.numel()) in sizes and o.untyped_storage().nbytes() > 0
               and o.untyped_storage().data_ptr() not in shards)


def probe(out: Path, flags: list[str], run_fit: bool) -> None:
    import torch
    from deepspeed.utils import safe_get_full_grad

    from lrpt.trainer.runtime import distributed

    from lrpt.trainer.backbone import quant
    from lrpt.trainer.config.run_config import load_config
    from lrpt.trainer.train.loop import fit, setup
    from lrpt.trainer.tensor_bytes import held_bytes

    run = setup(load_config([*flags, "--output_dir", str(out / "run")]))
    rank = distributed.rank()
    backbone = run.backbone.model
    layers = {n: m for n, m in backbone.named_modules() if quant.is_quantized_layer(m)}
    weights = {n: m.weight for n, m in layers.items()}

    batch = next(run.batches(epoch=0))
    run.engine.train()
    loss = run.engine(**batch).loss
    run.engine.backward(loss)
    grads = {n: safe_get_full_grad(p).tolist() for n, p in run.prompt.named_parameters()}
    run.engine.step()
    held = {"quantized_layers": held_bytes(layers.values()), "backbone": held_bytes(backbone.modules()),
            "quant_state": quant.quant_state_bytes(backbone),
            # quantized weights ZeRO still keeps gathered (its reuse cache) when held bytes are measured
            "still_gathered": sum(w.untyped_storage().nbytes() for w in weights.values()
                                  if hasattr(w, "ds_tensor") and w.numel() > 0)}
    sharded = [w for w in weights.values() if hasattr(w, "ds_tensor") and w.ds_tensor.numel() < w.ds_numel]
    copies = full_copies_alive(sharded) if sharded else None
    steps = [loss.item()]
    for _ in range(3):
        step_loss = run.engine(**batch).loss
        run.engine.backward(step_loss)
        run.engine.step()
        steps.append(step_loss.item())

    out.mkdir(parents=True, exist_ok=True)
    torch.save({n: {"shard": w.ds_tensor.detach().clone() if hasattr(w, "ds_tensor") else None,
                    "scb": layers[n].SCB.clone() if hasattr(layers[n], "SCB") else None,
                    "absmax": w.quant_state.absmax.clone() if getattr(w, "quant_state", None) is not None else None}
                for n, w in weights.items()}, out / f"shards{rank}.pt")

    before = after = restored = None
    with torch.no_grad():
        before = run.engine(**batch).loss.item()
        run.engine.empty_partition_cache()  # drop parameters ZeRO kept gathered for reuse
        still_gathered = sum(w.numel() for w in sharded)
        if sharded:
            saved = [w.ds_tensor.clone() for w in sharded]
            if rank == 1:
                for w in sharded:
                    w.ds_tensor.zero_()
            after = run.engine(**batch).loss.item()
            for w, s in zip(sharded, saved):
                w.ds_tensor.copy_(s)
            run.engine.empty_partition_cache()
            restored = run.engine(**batch).loss.item()

    result = {"rank": rank, "world_size": distributed.world_size(), "stage": run.stage,
              "layer_types": sorted({type(m).__name__ for m in layers.values()}), "quantized_layers": len(layers),
              "sharded_quantized_weights": len(sharded), "held_after_first_step": held, "full_copies_alive": copies,
              "loss": loss.item(), "grads": grads, "step_losses": steps,
              "loss_before_corruption": before, "gathered_after_release": still_gathered,
              "loss_after_rank1_zeroed": after, "loss_after_restore": restored,
              "batch": {k: v.tolist() for k, v in batch.items()}}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if run_fit:
        fit(run)
    run.engine.destroy()  # the next session starts clean


def main() -> None:
    split = sys.argv.index("--")
    mine = [a for a in sys.argv[1:split] if not a.startswith("--local_rank")]  # the launcher adds it
    out, sessions, flags = Path(mine[0]), json.loads(mine[1]), sys.argv[split + 1:]
    from lrpt.trainer.backbone import quant

    convert = quant.prepare_for_zero3
    for i, (name, extra) in enumerate(sessions.items()):
        # a session named "*bnb_native" leaves bitsandbytes' own layers in place under ZeRO-3: the
        # control showing that the checks above catch the hidden full copies
        quant.prepare_for_zero3 = (lambda model: {}) if name.endswith("bnb_native") else convert
        probe(out / name, [*flags, *extra], run_fit=i == 0)
        gc.collect()


if __name__ == "__main__":
    main()
