"""Run under a launcher (`deepspeed --num_gpus 2 tests/zero_probe.py OUT_DIR -- <lrpt train flags>`).

Builds lrpt's own engine with `trainer.loop.setup`, then writes OUT_DIR/rank<r>.json with:
- the frozen backbone's parameter elements this rank holds (ZeRO shards) and the full count;
- the loss and the full (all-reduced) prompt gradient of this rank's first micro-batch;
- losses of a few optimizer steps on that batch;
- the loss after every rank zeroes its own shard of the frozen weights on rank 1 only, which
  proves the forward computes from the gathered shards and not from a hidden full copy;
- the greedy tokens generated from the initial prompt for this rank's first source (synced_gpus).
"""
import json
import sys
from pathlib import Path

import lrpt.trainer  # noqa: F401  (DS_ACCELERATOR before deepspeed)


def main() -> None:
    split = sys.argv.index("--")
    mine = [a for a in sys.argv[1:split] if not a.startswith("--local_rank")]  # the launcher adds it
    out, flags = Path(mine[0]), sys.argv[split + 1:]
    import torch
    from deepspeed.utils import safe_get_full_grad

    from lrpt.trainer.runtime import distributed
    from lrpt.trainer.config.run_config import load_config
    from lrpt.trainer.train.loop import setup

    run = setup(load_config(flags))
    rank = distributed.rank()
    frozen = [p for p in run.backbone.model.parameters() if not p.requires_grad]
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in frozen)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in frozen)
    sharded = [p for p in frozen if hasattr(p, "ds_tensor") and p.ds_tensor.numel() < p.ds_numel]

    batch = next(run.batches(epoch=0))
    # greedy generation from the initial prompt, every rank gathering every layer per token (synced_gpus);
    # at least 6 new tokens, so that an immediate end of sequence cannot hide a difference
    source = batch["input_ids"][:1, :int(batch["attention_mask"][0].sum())]
    run.engine.eval()
    with torch.no_grad():
        generated = run.model.generate(source, torch.ones_like(source), max_new_tokens=6, min_new_tokens=6,
                                       synced_gpus=True)
    run.engine.train()
    loss = run.engine(**batch).loss
    run.engine.backward(loss)
    grads = {n: safe_get_full_grad(p).tolist() for n, p in run.prompt.named_parameters()}
    run.engine.step()
    steps = [loss.item()]
    for _ in range(4):
        step_loss = run.engine(**batch).loss
        run.engine.backward(step_loss)
        run.engine.step()
        steps.append(step_loss.item())

    with torch.no_grad():
        before = run.engine(**batch).loss.item()
        run.engine.empty_partition_cache()  # drop parameters ZeRO kept gathered for reuse
        still_gathered = sum(p.numel() for p in sharded if p.numel() > 0)
        if rank == 1:
            for p in sharded:
                p.ds_tensor.zero_()
        after = run.engine(**batch).loss.item()

    result = {"rank": rank, "world_size": distributed.world_size(), "stage": run.stage,
              "frozen_held": held, "frozen_total": total, "sharded_tensors": len(sharded),
              "loss": loss.item(), "grads": grads, "step_losses": steps,
              "loss_before_corruption": before, "gathered_after_release": still_gathered,
              "loss_after_rank1_zeroed": after,
              "batch": {k: v.tolist() for k, v in batch.items()},
              "generation": {"source": source.tolist(), "tokens": generated.tolist()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
